"""Bypass corpus, container fields: every host power a ``docker run`` flag asks for, as ``dev``.

Each case sends ``docker run --network none --user 1000 <flags> tiny true`` (the allowed
baseline plus one technique) through the real CLI, and asserts our deny naming the rule and the
field, and that no container appeared (no ``--rm``: a container wrongly allowed would stay
behind, even if the sandbox's runtime then failed to start it). Host-path tricks that need a role with *some* binds
(``..``, ``//``, trailing slash, symlinks) run on the private ``custom_env`` stack as ``binder``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
from bypasslib import API, DEV, CustomEnv, api_denied, cli_denied, container_json, create_body, unchanged
from stack import Stack

pytestmark = pytest.mark.e2e


class Flag(NamedTuple):
    args: tuple[str, ...]
    rule: str
    field: str


def _flag(args: str, rule: str, field: str, id: str) -> object:
    return pytest.param(Flag(tuple(args.split("|")), rule, field), id=id)


# One row per technique: the flags (split on "|"), the policy rule and the field the deny names.
RUN_FLAGS = [
    _flag("--privileged", "containers.privileged", "HostConfig.Privileged", "privileged"),
    _flag("--cap-add|SYS_ADMIN", "containers.capabilities", "HostConfig.CapAdd[0]", "cap-add-SYS_ADMIN"),
    _flag("--cap-add|cap_sys_admin", "containers.capabilities", "HostConfig.CapAdd[0]", "cap-add-cap_sys_admin"),
    _flag("--cap-add|ALL", "containers.capabilities", "HostConfig.CapAdd[0]", "cap-add-ALL"),
    _flag("-v|/:/host", "containers.bind_mounts", "HostConfig.Binds[0]", "bind-root"),
    _flag("-v|/etc:/x:ro", "containers.bind_mounts", "HostConfig.Binds[0]", "bind-etc-ro"),
    _flag("--mount|type=bind,src=/,dst=/h", "containers.bind_mounts", "HostConfig.Mounts[0].Source", "mount-bind-root"),
    _flag("-v|/var/run/docker.sock:/s:ro", "containers.bind_mounts", "HostConfig.Binds[0]", "bind-docker-socket"),
    _flag("--mount|type=bind,src=/tmp,dst=/x,readonly,bind-propagation=rshared", "containers.unconfined",
          "HostConfig.Mounts[0].BindOptions.Propagation", "mount-rshared"),
    _flag("-v|/tmp:/x:ro,rshared", "containers.unconfined", "HostConfig.Binds[0]", "bind-rshared"),
    _flag("--pid|host", "containers.host_namespaces", "HostConfig.PidMode", "pid-host"),
    _flag("--ipc|host", "containers.host_namespaces", "HostConfig.IpcMode", "ipc-host"),
    _flag("--uts|host", "containers.host_namespaces", "HostConfig.UTSMode", "uts-host"),
    _flag("--userns|host", "containers.host_namespaces", "HostConfig.UsernsMode", "userns-host"),
    _flag("--cgroupns|host", "containers.host_namespaces", "HostConfig.CgroupnsMode", "cgroupns-host"),
    _flag("--device|/dev/sda", "containers.devices", "HostConfig.Devices[0]", "device-sda"),
    _flag("--device|/dev/null", "containers.devices", "HostConfig.Devices[0]", "device-null"),
    _flag("--device-cgroup-rule|b *:* rwm", "containers.devices", "HostConfig.DeviceCgroupRules[0]",
          "device-cgroup-rule"),
    _flag("--gpus|all", "containers.devices", "HostConfig.DeviceRequests[0]", "gpus-all"),
    _flag("--security-opt|seccomp=unconfined", "containers.unconfined", "HostConfig.SecurityOpt[0]",
          "seccomp-unconfined"),
    _flag("--security-opt|seccomp:unconfined", "containers.unconfined", "HostConfig.SecurityOpt[0]",
          "seccomp-colon-unconfined"),
    _flag("--security-opt|apparmor=unconfined", "containers.unconfined", "HostConfig.SecurityOpt[0]",
          "apparmor-unconfined"),
    _flag("--security-opt|label=disable", "containers.unconfined", "HostConfig.SecurityOpt[0]", "label-disable"),
    _flag("--security-opt|systempaths=unconfined", "containers.unconfined", "HostConfig.MaskedPaths",
          "systempaths-unconfined"),
    _flag("--group-add|0", "containers.run_as_root", "HostConfig.GroupAdd[0]", "group-add-0"),
    _flag("-p|80:80", "containers.published_ports", "HostConfig.PortBindings.80/tcp", "publish-port-80"),
    _flag("-P|--expose|8080", "containers.published_ports", "HostConfig.PublishAllPorts", "publish-all"),
    _flag("--sysctl|net.ipv4.ip_forward=1", "containers.sysctls", "HostConfig.Sysctls.net.ipv4.ip_forward",
          "sysctl"),
    _flag("--runtime|evil", "containers.runtimes", "HostConfig.Runtime", "runtime"),
    _flag("--cgroup-parent|/evil", "containers.unconfined", "HostConfig.CgroupParent", "cgroup-parent"),
    _flag("--memory|8g", "containers.max_memory", "HostConfig.Memory", "memory-above-max"),
    _flag("--pids-limit|-1", "containers.max_pids", "HostConfig.PidsLimit", "pids-limit-unlimited"),
    _flag("--oom-kill-disable", "containers.max_memory", "HostConfig.OomKillDisable", "oom-kill-disable"),
    _flag("--ulimit|rtprio=99", "containers.max_cpus", "HostConfig.Ulimits[0]", "ulimit-rtprio"),
    _flag("--cpu-rt-runtime|95000", "containers.max_cpus", "HostConfig.CpuRealtimeRuntime", "cpu-rt-runtime"),
    _flag("--log-driver|syslog", "containers.unconfined", "HostConfig.LogConfig.Type", "log-driver-syslog"),
]  # fmt: skip


@pytest.mark.parametrize("flag", RUN_FLAGS)
def test_run_flag_is_denied(e2e_env: Stack, flag: Flag) -> None:
    """[§7.1] One host power per ``docker run`` flag; the deny names the rule and the field."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "run", "--network", "none", "--user", "1000", *flag.args,
                                   "tiny", "true")  # fmt: skip
    cli_denied(e2e_env, result, action="container:create", rule=flag.rule, field=flag.field)


def test_network_host_is_denied(e2e_env: Stack) -> None:
    """[§7.1] ``--network host`` shares the host's interfaces and its loopback services."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "run", "--network", "host", "--user", "1000", "tiny", "true")
    cli_denied(e2e_env, result, rule="containers.host_namespaces", field="HostConfig.NetworkMode")


@pytest.mark.parametrize("user", ["root", "0", "0:0"])
def test_run_as_root_is_denied(e2e_env: Stack, user: str) -> None:
    """[§7.1] ``-u root`` / ``-u 0`` / ``-u 0:0`` name uid 0 explicitly."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "run", "--network", "none", "-u", user, "tiny", "true")
    cli_denied(e2e_env, result, rule="containers.run_as_root", field="User", says=f"user '{user}' is root")


def test_no_user_on_a_root_image_is_denied(e2e_env: Stack) -> None:
    """[§7.1] No ``--user``: the container runs as the image's USER, which the plugin reads from
    the daemon (``tiny`` sets none, so root)."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "run", "--network", "none", "tiny", "true")
    cli_denied(e2e_env, result, rule="containers.run_as_root", field="User", says="sets no USER")


def test_volumes_from_another_users_container_is_denied(e2e_env: Stack, dev2_container: str) -> None:
    """[B11] ``--volumes-from`` copies every mount of dev2's container, host binds included."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "run", "--network", "none", "--user", "1000",
                                   "--volumes-from", dev2_container, "tiny", "true")  # fmt: skip
    cli_denied(e2e_env, result, rule="ownership", field="HostConfig.VolumesFrom[0]")


def test_link_to_another_users_container_is_denied(e2e_env: Stack, dev2_container: str) -> None:
    """[B11] ``--link`` names dev2's container; on the default bridge a legacy link copies its
    environment (its secrets) into the new container. Sent through the API: the CLI refuses
    ``--link`` with ``--network none`` itself, the daemon does not look before the plugin."""
    with unchanged(e2e_env):
        body = create_body(Links=[f"{dev2_container}:db"])
        reply = e2e_env.api_as(DEV, "POST", f"{API}/containers/create?name=bypass-link", body)
    api_denied(e2e_env, reply, rule="ownership", field="HostConfig.Links[0]")


def test_rtprio_in_any_case_is_denied(e2e_env: Stack) -> None:
    """[§7.1] The CLI only sends lower-case ulimit names; the daemon upper-cases any name it gets
    (``RLIMIT_`` + ToUpper), so a raw request's ``RtPrio`` is the same real-time limit."""
    with unchanged(e2e_env):
        body = create_body(Ulimits=[{"Name": "nofile", "Soft": 1024, "Hard": 1024},
                                    {"name": "RtPrio", "soft": 1, "hard": 1}])  # fmt: skip
        reply = e2e_env.api_as(DEV, "POST", f"{API}/containers/create?name=bypass-rtprio", body)
    api_denied(e2e_env, reply, rule="containers.max_cpus", field="HostConfig.Ulimits[1]")


UPDATES = [
    pytest.param(("--memory", "8g"), "containers.max_memory", "Memory", id="memory-above-max"),
    pytest.param(("--pids-limit", "-1"), "containers.max_pids", "PidsLimit", id="pids-limit-unlimited"),
    pytest.param(("--cpus", "4"), "containers.max_cpus", "NanoCpus", id="cpus-above-max"),
]


@pytest.mark.parametrize(("args", "rule", "field"), UPDATES)
def test_update_lifting_limits_is_denied(
    e2e_env: Stack, dev_container: str, args: tuple[str, ...], rule: str, field: str
) -> None:
    """[§7.2] ``docker update`` of the caller's own container may not lift the limits a create
    could not have had; the container keeps its HostConfig."""
    before = container_json(e2e_env, dev_container)["HostConfig"]
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "update", *args, dev_container)
    cli_denied(e2e_env, result, action="container:update", rule=rule, field=field)
    assert container_json(e2e_env, dev_container)["HostConfig"] == before


# --- host paths below an allowed prefix (private stack, role "binder") ----------------------------


def _binder_run(env: CustomEnv, *volume: str) -> tuple[Stack, subprocess.CompletedProcess[str]]:
    stack = env.stack
    with unchanged(stack):
        result = stack.docker_as("binder", "run", "--network", "none", "--user", "1000", *volume,
                                 "tiny", "true")  # fmt: skip
    return stack, result


def test_binder_control_bind_below_the_allowed_prefix_works(custom_env: CustomEnv) -> None:
    """[control] Not a technique: the custom role really allows ``<allowed>/data`` read-only, so
    the denies below are about the trick, not about binds in general."""
    stack = custom_env.stack
    result = stack.docker_as("binder", "run", "--rm", "--network", "none", "--user", "1000",
                             "-v", f"{custom_env.allowed}/data:/d:ro", "tiny", "ls", "/d")  # fmt: skip
    assert result.returncode == 0, result.stderr


BINDER_PATHS = [
    pytest.param("{allowed}/../../../etc:/x:ro", "/etc", id="dotdot"),
    pytest.param("/{allowed}/../../../etc/:/x:ro", "/etc", id="double-slash-and-trailing-slash"),
    pytest.param("//etc/:/x:ro", "/etc", id="double-slash"),
    pytest.param("/etc/:/x:ro", "/etc", id="trailing-slash"),
]


@pytest.mark.parametrize(("spec", "normalised"), BINDER_PATHS)
def test_binder_path_tricks_are_denied(custom_env: CustomEnv, spec: str, normalised: str) -> None:
    """[§6.3] ``..``, ``//`` and trailing slashes that leave the allowed prefix: the path is
    normalised before the prefix test, and the deny names the normalised path."""
    stack, result = _binder_run(custom_env, "-v", spec.format(allowed=custom_env.allowed))
    cli_denied(stack, result, rule="containers.bind_mounts", field="HostConfig.Binds[0]", role="binder",
               user="binder", says=f"bind mount of host path {normalised} is not allowed")  # fmt: skip


def test_binder_symlink_below_the_allowed_prefix_is_denied(custom_env: CustomEnv) -> None:
    """[B17] ``<allowed>/etc-link`` is a symlink to /etc, which the daemon would follow."""
    link = custom_env.allowed / "etc-link"
    stack, result = _binder_run(custom_env, "-v", f"{link}:/x:ro")
    cli_denied(stack, result, rule="containers.bind_mounts", field="HostConfig.Binds[0]", role="binder",
               user="binder", says="resolves through a symlink to /etc")  # fmt: skip


def _user_home(env: CustomEnv) -> Path:
    """``<allowed>/home``, owned by uid 1000 (a developer's own directory), with ``proj`` in it."""
    home = env.allowed / "home"
    (home / "proj").mkdir(parents=True, exist_ok=True)
    os.chown(home, 1000, 1000)
    return home


def test_binder_control_the_daemon_follows_a_symlink_swapped_in_after_create(custom_env: CustomEnv) -> None:
    """[control] Why the technique below matters: for a role that trusts user-writable directories,
    ``proj`` is a directory at ``docker create`` and a symlink to /etc at ``docker start``, and the
    daemon mounts /etc."""
    stack, home = custom_env.stack, _user_home(custom_env)
    name = "bypass-swap-control"
    stack.docker_as("admin", "rm", "-f", name)
    try:
        stack.docker_as("trusting", "create", "--name", name, "--network", "none", "--user", "1000",
                        "-v", f"{home}/proj:/x:ro", "tiny", "cat", "/x/hostname", check=True)  # fmt: skip
        (home / "proj").rmdir()
        (home / "proj").symlink_to("/etc")
        started = stack.docker_as("trusting", "start", "-a", name)
        assert started.returncode == 0, started.stderr
        assert started.stdout == Path("/etc/hostname").read_text()
    finally:
        stack.docker_as("admin", "rm", "-f", name)
        if (home / "proj").is_symlink():
            (home / "proj").unlink()


def test_binder_bind_through_a_user_writable_directory_is_denied(custom_env: CustomEnv) -> None:
    """[B17] ``<allowed>/home/proj`` where uid 1000 owns ``home``: create with a directory there,
    then swap it for a symlink to /etc before ``docker start`` (the daemon resolves the source
    again at every start, after any check)."""
    stack, home = custom_env.stack, _user_home(custom_env)
    with unchanged(stack):
        result = stack.docker_as("binder", "create", "--name", "bypass-swap", "--network", "none", "--user", "1000",
                                 "-v", f"{home}/proj:/x:ro", "tiny", "cat", "/x/hostname")  # fmt: skip
    cli_denied(stack, result, rule="containers.bind_mounts_user_writable", field="HostConfig.Binds[0]",
               role="binder", user="binder", says=f"runs through {home} (writable by its owner, uid 1000)")  # fmt: skip


def test_binder_writable_bind_is_denied(custom_env: CustomEnv) -> None:
    """[§7.1] A bind below the allowed prefix, but writable (no ``:ro``)."""
    stack, result = _binder_run(custom_env, "-v", f"{custom_env.allowed}/data:/d")
    cli_denied(stack, result, rule="containers.bind_mounts_read_only", field="HostConfig.Binds[0]",
               role="binder", user="binder")  # fmt: skip
