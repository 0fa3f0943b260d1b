"""Bypass corpus, the platform (B14-B16, B20, B22-B24): turning authz off, installing code that
runs as root, swarm, BuildKit's unauthorised channels, debug endpoints and registry logins.

None of these is a developer's job: the built-in developer's role does not allow the action, so
the deny reads ``none of your roles allows <action>``. It must come *before* the daemon acts (or
answers "not found", "not a swarm manager"): the plugin list, the swarm state and the plugins
installed are part of ``unchanged``.
"""

from __future__ import annotations

import pytest
from bypasslib import API, DEV, api_denied, cli_denied, unchanged
from stack import Stack

pytestmark = pytest.mark.e2e


def _not_allowed(action: str) -> str:
    return f"none of your roles allows {action}"


PLUGIN_COMMANDS = [
    pytest.param(("disable",), "plugin:disable", id="disable"),
    pytest.param(("disable", "-f"), "plugin:disable", id="disable-force"),
    pytest.param(("rm", "-f"), "plugin:delete", id="remove-force"),
    pytest.param(("set",), "plugin:set", id="set"),
    pytest.param(("enable",), "plugin:enable", id="enable"),
]


@pytest.mark.parametrize(("args", "action"), PLUGIN_COMMANDS)
def test_plugin_commands_on_the_authz_plugin(e2e_env: Stack, args: tuple[str, ...], action: str) -> None:
    """[B20] ``docker plugin disable|rm|set|enable <our plugin>``: disabling the authz plugin
    removes it from the daemon's chain. Ours is a legacy plugin here, so the daemon would answer
    "not found": our deny must come first, and the plugin stays in the chain."""
    tail = ("mount.source=/",) if args == ("set",) else ()
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "plugin", *args, e2e_env.plugin_name, *tail)
    cli_denied(e2e_env, result, action=action, says=_not_allowed(action))


def test_plugin_install(e2e_env: Stack) -> None:
    """[B14] ``docker plugin install --grant-all-permissions vieux/sshfs``: code with the host's
    privileges (the CLI asks for the privileges first; that is the request denied)."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "plugin", "install", "--grant-all-permissions", "vieux/sshfs")
    cli_denied(e2e_env, result, action="plugin:privileges", says=_not_allowed("plugin:privileges"))


def test_plugin_pull_without_asking_for_privileges(e2e_env: Stack) -> None:
    """[B14] ``POST /plugins/pull`` directly, skipping the CLI's privileges request (the
    daemon's own privilege comparison had an off-by-one until 29.3.1, CVE-2026-33997)."""
    privileges = [{"Name": "mount", "Description": "", "Value": ["/"]}]
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "POST", f"{API}/plugins/pull?remote=vieux/sshfs&name=sshfs", privileges)
    api_denied(e2e_env, reply, action="plugin:install", says=_not_allowed("plugin:install"))


def test_plugin_create_from_a_tar(e2e_env: Stack) -> None:
    """[B14] ``POST /plugins/create``: a plugin from a local rootfs, with no privilege check at all."""
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "POST", f"{API}/plugins/create?name=evil", b"not a tar",
                               {"Content-Type": "application/x-tar"})  # fmt: skip
    api_denied(e2e_env, reply, action="plugin:create", says=_not_allowed("plugin:create"))


SWARM_COMMANDS = [
    pytest.param(("swarm", "init", "--advertise-addr", "127.0.0.1"), "swarm:init", id="swarm-init"),
    pytest.param(("swarm", "join", "--token", "SWMTKN-1-x", "127.0.0.1:2377"), "swarm:join", id="swarm-join"),
    pytest.param(("service", "create", "--mount", "type=bind,src=/,dst=/host", "tiny", "true"), "service:create",
                 id="service-create-bind-root"),
    pytest.param(("secret", "create", "stolen", "-"), "secret:create", id="secret-create"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "action"), SWARM_COMMANDS)
def test_swarm(e2e_env: Stack, args: tuple[str, ...], action: str) -> None:
    """[B15] Swarm: tasks start on every node without any authz call, so a service's mounts are
    never seen again; ``init``/``join`` hand the engine to a cluster. This daemon is no swarm
    member: the deny must come before the daemon says so."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, *args, input="secret\n")
    cli_denied(e2e_env, result, action=action, says=_not_allowed(action))


@pytest.mark.parametrize(
    ("path", "action"), [("/grpc", "build:grpc"), ("/session", "build:session")], ids=["grpc", "session"]
)
def test_buildkit_upgrades(e2e_env: Stack, path: str, action: str) -> None:
    """[B16] ``POST /grpc`` and ``/session`` (h2c upgrade): once upgraded, BuildKit's traffic is
    never authorised; only the upgrade request is."""
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, "POST", path, None, {"Connection": "Upgrade", "Upgrade": "h2c"})
    api_denied(e2e_env, reply, action=action, says=_not_allowed(action))


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/debug/vars"), ("POST", "/debug/vars"), ("GET", "/debug/pprof/cmdline")],
    ids=["vars", "vars-post", "pprof-cmdline"],
)
def test_debug_endpoints(e2e_env: Stack, method: str, path: str) -> None:
    """[B23] ``/debug/vars`` and ``/debug/pprof/*``: always routed (any method on 20.10), they
    give the daemon's command line, memory and profiles."""
    with unchanged(e2e_env):
        reply = e2e_env.api_as(DEV, method, path)
    api_denied(e2e_env, reply, action="system:debug", says=_not_allowed("system:debug"))


def test_registry_login(e2e_env: Stack) -> None:
    """[B24] ``docker login``: the daemon contacts the registry from the host, and 20.10.24 hands
    the password to the plugin. Decision: registry logins (``system:auth``) are not a developer's
    action; pulls from allowed registries need none."""
    with unchanged(e2e_env):
        result = e2e_env.docker_as(DEV, "login", "-u", "someone", "--password-stdin", "127.0.0.1:5999",
                                   input="secret\n")  # fmt: skip
    cli_denied(e2e_env, result, action="system:auth", says=_not_allowed("system:auth"))
