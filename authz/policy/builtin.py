"""The built-in roles, present after ``authzctl init`` and usable without being defined.

- ``viewer``: read-only — list/inspect/logs of objects, version/info/ping.
- ``developer``: a restricted profile modelled on the Kubernetes Pod Security Standards
  ("restricted") and section 5 of the CIS Docker Benchmark: own objects only, no privileged, no
  added capabilities but NET_BIND_SERVICE, no host namespaces, binds, devices or unconfined
  profiles, non-root, no privileged host ports, bounded resources, official images only.
- ``operator``: any container/image/network/volume action on any owner, still no privileged, no
  host namespaces, no host binds, no plugin or swarm changes.
- ``admin``: everything.
A stored role of the same name overrides a built-in one.
"""

from __future__ import annotations

from types import MappingProxyType

from authz.policy.model import ContainerRules, ExecRules, ImageRules, NetworkRules, Role, VolumeRules

VIEWER = Role(
    name="viewer",
    description="Read-only: list, inspect and logs of every object; version, info, ping",
    allow=(
        "system:ping", "system:version", "system:info", "system:df", "system:events",
        "container:list", "container:inspect", "container:logs", "container:top", "container:stats",
        "container:diff", "container:copy-stat", "exec:inspect",
        "image:list", "image:inspect", "image:history",
        "network:list", "network:inspect", "volume:list", "volume:inspect",
    ),
    ownership="any",
    builtin=True,
)  # fmt: skip

DEVELOPER = Role(
    name="developer",
    description="Unprivileged, non-root, resource-bounded containers from official images, on own objects",
    extends=("viewer",),
    allow=(
        "container:*", "exec:*", "image:pull", "image:build", "image:tag", "image:import",
        "image:load", "network:create", "network:connect", "network:disconnect", "network:delete",
        "volume:create", "volume:delete",
    ),
    # Prune acts on every owner's objects; export copies a whole filesystem out.
    deny=("container:prune", "container:export", "network:prune", "volume:prune", "image:prune"),
    ownership="own",
    containers=ContainerRules(
        privileged=False,
        capabilities=("NET_BIND_SERVICE",),
        host_namespaces=False,
        bind_mounts=(),
        bind_mounts_read_only=True,
        devices=False,
        unconfined=False,
        run_as_root=False,
        published_ports=("1024-65535",),
        sysctls=(),
        runtimes=("runc",),
        max_memory=4 * 1024**3,
        max_cpus=2.0,
        max_pids=1024,
        require_limits=False,
    ),
    exec=ExecRules(privileged=False, run_as_root=False),
    images=ImageRules(allow=("docker.io/library/*",), require_digest=False, local_builds=False),
    networks=NetworkRules(create=("*",), drivers=("bridge",), use=("*",)),
    volumes=VolumeRules(drivers=("local",), driver_opts=False),
    builtin=True,
)  # fmt: skip

OPERATOR = Role(
    name="operator",
    description="Any container/image/network/volume action on any owner; no host-level powers",
    extends=("viewer",),
    allow=("container:*", "exec:*", "image:*", "network:*", "volume:*"),
    ownership="any",
    containers=ContainerRules(
        privileged=False,
        capabilities=("NET_BIND_SERVICE",),
        host_namespaces=False,
        bind_mounts=(),
        devices=False,
        unconfined=False,
        run_as_root=True,
        published_ports=("*",),
        sysctls=(),
        runtimes=("runc",),
        require_limits=False,
    ),
    exec=ExecRules(privileged=False, run_as_root=True),
    images=ImageRules(allow=("**",), require_digest=False, local_builds=True),
    networks=NetworkRules(create=("*",), drivers=("bridge", "overlay", "null"), use=("*",)),
    volumes=VolumeRules(drivers=("local",), driver_opts=False),
    builtin=True,
)  # fmt: skip

ADMIN = Role(
    name="admin",
    description="Everything, including plugins, swarm and host-level container powers",
    allow=("*",),
    ownership="any",
    containers=ContainerRules(
        privileged=True,
        capabilities=("ALL",),
        host_namespaces=True,
        bind_mounts=("/",),
        bind_mounts_read_only=False,
        bind_mounts_user_writable=True,
        devices=True,
        unconfined=True,
        run_as_root=True,
        published_ports=("*",),
        sysctls=("*",),
        runtimes=("*",),
        require_limits=False,
    ),
    exec=ExecRules(privileged=True, run_as_root=True),
    images=ImageRules(allow=("**",), require_digest=False, local_builds=True),
    # host, macvlan and ipvlan are never covered by "*": an admin gets them by name.
    networks=NetworkRules(create=("*",), drivers=("*", "host", "macvlan", "ipvlan"), use=("*",)),
    volumes=VolumeRules(drivers=("*",), driver_opts=True),
    builtin=True,
)  # fmt: skip

BUILTIN_ROLES = MappingProxyType({r.name: r for r in (VIEWER, DEVELOPER, OPERATOR, ADMIN)})
