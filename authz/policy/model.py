"""The policy as immutable values (policy-v1, see docs/policy-v1.md).

A ``Policy`` is what an admin wrote; a ``PolicySnapshot`` is a policy plus the directory of users,
groups and revoked tokens at one store revision, compiled once and shared by every request.
Unset constraint fields are ``None`` and mean "inherit"; ``resolved()`` fills them with the
restrictive defaults, so a role that says nothing about a power does not grant it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from authz.request import Mode


@dataclass(frozen=True, slots=True)
class ContainerRules:
    """``roles.<r>.containers``: checked on container:create and container:update."""

    privileged: bool | None = None
    capabilities: tuple[str, ...] | None = None  # normalised: upper case, no CAP_ prefix
    host_namespaces: bool | None = None
    bind_mounts: tuple[str, ...] | None = None  # host path prefixes
    bind_mounts_read_only: bool | None = None
    # sources through directories non-root users can write (an entry swapped for a symlink later)
    bind_mounts_user_writable: bool | None = None
    devices: bool | None = None
    unconfined: bool | None = None
    run_as_root: bool | None = None
    published_ports: tuple[str, ...] | None = None  # "8000-8999", "80", "*"
    sysctls: tuple[str, ...] | None = None
    runtimes: tuple[str, ...] | None = None
    max_memory: int | None = None  # bytes
    max_cpus: float | None = None
    max_pids: int | None = None
    require_limits: bool | None = None


@dataclass(frozen=True, slots=True)
class ExecRules:
    privileged: bool | None = None
    run_as_root: bool | None = None


@dataclass(frozen=True, slots=True)
class ImageRules:
    allow: tuple[str, ...] | None = None  # normalised reference patterns
    require_digest: bool | None = None
    local_builds: bool | None = None


@dataclass(frozen=True, slots=True)
class NetworkRules:
    create: tuple[str, ...] | None = None
    drivers: tuple[str, ...] | None = None
    use: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class VolumeRules:
    drivers: tuple[str, ...] | None = None
    driver_opts: bool | None = None


# The restrictive defaults: what a role grants when neither it nor a parent says otherwise.
DEFAULT_CONTAINERS = ContainerRules(
    privileged=False,
    capabilities=(),
    host_namespaces=False,
    bind_mounts=(),
    bind_mounts_read_only=True,
    bind_mounts_user_writable=False,
    devices=False,
    unconfined=False,
    run_as_root=False,
    published_ports=(),
    sysctls=(),
    runtimes=("runc",),
    max_memory=None,
    max_cpus=None,
    max_pids=None,
    require_limits=False,
)
DEFAULT_EXEC = ExecRules(privileged=False, run_as_root=False)
DEFAULT_IMAGES = ImageRules(allow=(), require_digest=False, local_builds=False)
DEFAULT_NETWORKS = NetworkRules(create=(), drivers=("bridge",), use=("none", "default", "bridge"))
DEFAULT_VOLUMES = VolumeRules(drivers=("local",), driver_opts=False)


T = TypeVar("T")


def overlay(base: T, top: T) -> T:
    """``top`` with its unset (None) fields taken from ``base``."""
    changes = {f.name: getattr(base, f.name) for f in fields(top) if getattr(top, f.name) is None}  # type: ignore[arg-type]
    return replace(top, **changes)  # type: ignore[type-var]


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    description: str = ""
    extends: tuple[str, ...] = ()
    mode: Mode | None = None  # None: settings.default_mode
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    ownership: str | None = None  # "own" | "any"; None: inherit, default "own"
    containers: ContainerRules = field(default_factory=ContainerRules)
    exec: ExecRules = field(default_factory=ExecRules)
    images: ImageRules = field(default_factory=ImageRules)
    networks: NetworkRules = field(default_factory=NetworkRules)
    volumes: VolumeRules = field(default_factory=VolumeRules)
    builtin: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    anonymous_role: str | None = None
    default_mode: Mode = Mode.ENFORCE


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class User:
    name: str
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    tls_cn: str | None = None
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class Policy:
    """A whole policy document (policy-v1), validated."""

    settings: Settings = field(default_factory=Settings)
    roles: dict[str, Role] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # reserved for future top-level keys


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """A policy at one store revision, plus the token revocation list, ready for evaluation."""

    revision: int
    policy: Policy
    revoked_tokens: frozenset[str] = frozenset()
    breakglass: dict[str, float] = field(default_factory=dict)  # user -> expiry (epoch seconds)
