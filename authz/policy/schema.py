"""Policy documents (policy-v1 mappings, as parsed from YAML) ⇄ ``Policy`` values.

``parse_policy`` validates everything and raises ``PolicyError`` naming the key path of the first
problem (``roles.developer.containers.capabilities[2]: unknown capability "SYS_ADMN"``).
``dump_policy`` produces a mapping that parses back to an equal ``Policy``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Mapping
from dataclasses import fields
from typing import Any

from authz import actions
from authz.errors import PolicyError
from authz.policy.model import (
    ContainerRules,
    ExecRules,
    Group,
    ImageRules,
    NetworkRules,
    Policy,
    Role,
    Settings,
    User,
    VolumeRules,
)
from authz.request import Mode

# Linux capabilities the daemon accepts (moby oci/caps, kernel 5.x), without the CAP_ prefix.
CAPABILITIES = frozenset(
    [
        "AUDIT_CONTROL",
        "AUDIT_READ",
        "AUDIT_WRITE",
        "BLOCK_SUSPEND",
        "BPF",
        "CHECKPOINT_RESTORE",
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "IPC_LOCK",
        "IPC_OWNER",
        "KILL",
        "LEASE",
        "LINUX_IMMUTABLE",
        "MAC_ADMIN",
        "MAC_OVERRIDE",
        "MKNOD",
        "NET_ADMIN",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_RAW",
        "PERFMON",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYSLOG",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_CHROOT",
        "SYS_MODULE",
        "SYS_NICE",
        "SYS_PACCT",
        "SYS_PTRACE",
        "SYS_RAWIO",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "WAKE_ALARM",
        "ALL",
    ]
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
_PORTS = re.compile(r"^(\*|\d{1,5}(-\d{1,5})?)$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_MODES = {m.value for m in Mode}


def normalise_capability(name: str) -> str:
    """``cap_sys_admin`` → ``SYS_ADMIN`` (the daemon upper-cases and adds ``CAP_`` itself)."""
    upper = name.strip().upper()
    return upper[4:] if upper.startswith("CAP_") else upper


def parse_size(value: Any, path: str) -> int:
    """``4g`` / ``512m`` / ``1073741824`` → bytes (docker's RAMInBytes units, binary)."""
    if isinstance(value, bool):
        raise PolicyError(path, "expected a size such as 512m or 4g")
    if isinstance(value, int):
        if value <= 0:
            raise PolicyError(path, "a size must be positive")
        return value
    match = _SIZE.match(str(value).strip()) if isinstance(value, str) else None
    if not match:
        raise PolicyError(path, f"expected a size such as 512m or 4g, got {value!r}")
    amount = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if amount <= 0:
        raise PolicyError(path, "a size must be positive")
    return amount


def format_size(size: int) -> str | int:
    for unit in ("p", "t", "g", "m", "k"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return size


# ---------------------------------------------------------------- small typed readers


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PolicyError(path, f"expected a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise PolicyError(path, f"keys must be strings, got {key!r}")
    return value


def _known_keys(value: Mapping[str, Any], allowed: set[str] | frozenset[str], path: str) -> None:
    for key in value:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            raise PolicyError(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(path, f"expected true or false, got {value!r}")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(path, f"expected a string, got {value!r}")
    return value


def _str_list(
    value: Any, path: str, check: Callable[[str, str], str] | None = None, known: Container[str] | None = None
) -> tuple[str, ...]:
    """``known``: names ``check`` accepts as they are. A list of only those skips the per-item
    checks (and their paths): 10,000 users' roles and groups are read at every policy change."""
    if not isinstance(value, list):
        raise PolicyError(path, f"expected a list, got {type(value).__name__}")
    if known is not None and all(type(item) is str and item in known for item in value):
        return tuple(value)
    out = []
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        text = _str(item, item_path)
        out.append(check(text, item_path) if check else text)
    return tuple(out)


def _name(value: str, path: str) -> str:
    if not _NAME.match(value):
        raise PolicyError(path, f"invalid name {value!r} (letters, digits, _ . @ -)")
    return value


def _action_pattern(value: str, path: str) -> str:
    if not actions.is_valid_pattern(value):
        raise PolicyError(path, f'unknown action "{value}" (see `authzctl actions` for the catalogue)')
    return value


def _capability(value: str, path: str) -> str:
    cap = normalise_capability(value)
    if cap not in CAPABILITIES:
        raise PolicyError(path, f'unknown capability "{value}"')
    return cap


def _host_path(value: str, path: str) -> str:
    if not value.startswith("/"):
        raise PolicyError(path, f"bind mount prefixes must be absolute host paths, got {value!r}")
    return value


def _port_range(value: str, path: str) -> str:
    if not _PORTS.match(value):
        raise PolicyError(path, f"expected a port, a range like 8000-8999, or *, got {value!r}")
    if value != "*":
        low, _, high = value.partition("-")
        if not 1 <= int(low) <= int(high or low) <= 65535:
            raise PolicyError(path, f"port range out of order or outside 1-65535: {value!r}")
    return value


# ---------------------------------------------------------------- sections

_SectionReader = Callable[[Any, str], Any]


def _positive_number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise PolicyError(path, f"expected a positive number, got {value!r}")
    return float(value)


def _positive_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PolicyError(path, f"expected a positive whole number, got {value!r}")
    return value


_CONTAINER_FIELDS: dict[str, _SectionReader] = {
    "privileged": _bool,
    "capabilities": lambda v, p: _str_list(v, p, _capability),
    "host_namespaces": _bool,
    "bind_mounts": lambda v, p: _str_list(v, p, _host_path),
    "bind_mounts_read_only": _bool,
    "bind_mounts_user_writable": _bool,
    "devices": _bool,
    "unconfined": _bool,
    "run_as_root": _bool,
    "published_ports": lambda v, p: _str_list(v, p, _port_range),
    "sysctls": _str_list,
    "runtimes": _str_list,
    "max_memory": parse_size,
    "max_cpus": _positive_number,
    "max_pids": _positive_int,
    "require_limits": _bool,
}
_EXEC_FIELDS: dict[str, _SectionReader] = {"privileged": _bool, "run_as_root": _bool}
_IMAGE_FIELDS: dict[str, _SectionReader] = {
    "allow": _str_list,
    "require_digest": _bool,
    "local_builds": _bool,
}
_NETWORK_FIELDS: dict[str, _SectionReader] = {"create": _str_list, "drivers": _str_list, "use": _str_list}
_VOLUME_FIELDS: dict[str, _SectionReader] = {"drivers": _str_list, "driver_opts": _bool}

_SECTIONS: dict[str, tuple[type[Any], dict[str, _SectionReader]]] = {
    "containers": (ContainerRules, _CONTAINER_FIELDS),
    "exec": (ExecRules, _EXEC_FIELDS),
    "images": (ImageRules, _IMAGE_FIELDS),
    "networks": (NetworkRules, _NETWORK_FIELDS),
    "volumes": (VolumeRules, _VOLUME_FIELDS),
}
_ROLE_KEYS = frozenset({"description", "extends", "mode", "allow", "deny", "ownership", *_SECTIONS})


def _section(doc: Any, path: str, cls: type[Any], readers: dict[str, _SectionReader]) -> Any:
    mapping = _mapping(doc, path)
    _known_keys(mapping, set(readers), path)
    values = {key: readers[key](value, f"{path}.{key}") for key, value in mapping.items() if value is not None}
    return cls(**values)


def parse_role(name: str, doc: Any, path: str | None = None) -> Role:
    """One role mapping → ``Role`` (references to other roles are checked by ``parse_policy``)."""
    path = path or f"roles.{name}"
    _name(name, path)
    mapping = _mapping(doc, path)
    _known_keys(mapping, _ROLE_KEYS, path)
    mode = mapping.get("mode")
    if mode is not None and mode not in _MODES:
        raise PolicyError(f"{path}.mode", f"expected enforce or warn, got {mode!r}")
    ownership = mapping.get("ownership")
    if ownership is not None and ownership not in ("own", "any"):
        raise PolicyError(f"{path}.ownership", f"expected own or any, got {ownership!r}")
    sections = {
        key: _section(mapping.get(key), f"{path}.{key}", cls, readers) for key, (cls, readers) in _SECTIONS.items()
    }
    return Role(
        name=name,
        description=_str(mapping.get("description", ""), f"{path}.description"),
        extends=_str_list(mapping.get("extends", []), f"{path}.extends", _name),
        mode=Mode(mode) if mode is not None else None,
        allow=_str_list(mapping.get("allow", []), f"{path}.allow", _action_pattern),
        deny=_str_list(mapping.get("deny", []), f"{path}.deny", _action_pattern),
        ownership=ownership,
        **sections,
    )


def parse_policy(doc: Any, builtin_roles: Mapping[str, Role] | None = None) -> Policy:
    """A whole policy-v1 mapping → ``Policy``. Role references may name built-in roles."""
    if builtin_roles is None:
        from authz.policy.builtin import BUILTIN_ROLES  # noqa: PLC0415 - avoids an import cycle

        builtin_roles = BUILTIN_ROLES
    root = _mapping(doc, "")
    _known_keys(root, {"version", "settings", "roles", "groups", "users"}, "")
    if root.get("version") != 1:
        raise PolicyError("version", f"expected 1, got {root.get('version')!r}")

    roles = {}
    for name, role_doc in _mapping(root.get("roles"), "roles").items():
        roles[name] = parse_role(name, role_doc)
    known_roles = set(roles) | set(builtin_roles)

    def role_ref(value: str, path: str) -> str:
        if value not in known_roles:
            raise PolicyError(path, f'unknown role "{value}"')
        return value

    for name, role in roles.items():
        for index, parent in enumerate(role.extends):
            role_ref(parent, f"roles.{name}.extends[{index}]")
    _check_cycles(roles, builtin_roles)

    settings_doc = _mapping(root.get("settings"), "settings")
    _known_keys(settings_doc, {"anonymous_role", "default_mode"}, "settings")
    anonymous = settings_doc.get("anonymous_role")
    if anonymous is not None:
        role_ref(_str(anonymous, "settings.anonymous_role"), "settings.anonymous_role")
    default_mode = settings_doc.get("default_mode", "enforce")
    if default_mode not in _MODES:
        raise PolicyError("settings.default_mode", f"expected enforce or warn, got {default_mode!r}")
    settings = Settings(anonymous_role=anonymous, default_mode=Mode(default_mode))

    groups = {}
    for name, group_doc in _mapping(root.get("groups"), "groups").items():
        path = f"groups.{name}"
        _name(name, path)
        mapping = _mapping(group_doc, path)
        _known_keys(mapping, {"roles"}, path)
        groups[name] = Group(name=name, roles=_str_list(mapping.get("roles", []), f"{path}.roles", role_ref))

    def group_ref(value: str, path: str) -> str:
        if value not in groups:
            raise PolicyError(path, f'unknown group "{value}"')
        return value

    users = {}
    tls_names: dict[str, str] = {}
    for name, user_doc in _mapping(root.get("users"), "users").items():
        path = f"users.{name}"
        _name(name, path)
        mapping = _mapping(user_doc, path)
        _known_keys(mapping, {"roles", "groups", "tls_cn", "disabled"}, path)
        tls_cn = mapping.get("tls_cn")
        if tls_cn is not None:
            _str(tls_cn, f"{path}.tls_cn")
            if tls_cn in tls_names:
                raise PolicyError(f"{path}.tls_cn", f'"{tls_cn}" is already the tls_cn of {tls_names[tls_cn]}')
            tls_names[tls_cn] = name
        users[name] = User(
            name=name,
            roles=_str_list(mapping.get("roles", []), f"{path}.roles", role_ref, known_roles),
            groups=_str_list(mapping.get("groups", []), f"{path}.groups", group_ref, groups),
            tls_cn=tls_cn,
            disabled=_bool(mapping.get("disabled", False), f"{path}.disabled"),
        )
    return Policy(settings=settings, roles=roles, groups=groups, users=users)


def _check_cycles(roles: Mapping[str, Role], builtin_roles: Mapping[str, Role]) -> None:
    def parents(name: str) -> tuple[str, ...]:
        role = roles.get(name) or builtin_roles.get(name)
        return role.extends if role else ()

    for start in roles:
        stack: list[tuple[str, tuple[str, ...]]] = [(start, (start,))]
        while stack:
            current, trail = stack.pop()
            for parent in parents(current):
                if parent in trail:
                    cycle = " -> ".join((*trail, parent))
                    raise PolicyError(f"roles.{start}.extends", f"inheritance cycle: {cycle}")
                stack.append((parent, (*trail, parent)))


# ---------------------------------------------------------------- dump


def _dump_section(section: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(section):
        value = getattr(section, f.name)
        if value is None:
            continue
        if f.name == "max_memory":
            value = format_size(value)
        elif f.name == "max_cpus" and float(value).is_integer():
            value = int(value)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def dump_role(role: Role) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if role.description:
        out["description"] = role.description
    if role.extends:
        out["extends"] = list(role.extends)
    if role.mode is not None:
        out["mode"] = role.mode.value
    out["allow"] = list(role.allow)
    if role.deny:
        out["deny"] = list(role.deny)
    if role.ownership is not None:
        out["ownership"] = role.ownership
    for key in _SECTIONS:
        section = _dump_section(getattr(role, key))
        if section:
            out[key] = section
    return out


def dump_policy(policy: Policy) -> dict[str, Any]:
    settings: dict[str, Any] = {"anonymous_role": policy.settings.anonymous_role}
    settings["default_mode"] = policy.settings.default_mode.value
    users: dict[str, Any] = {}
    for name, user in sorted(policy.users.items()):
        entry: dict[str, Any] = {"roles": list(user.roles)}
        if user.groups:
            entry["groups"] = list(user.groups)
        if user.tls_cn is not None:
            entry["tls_cn"] = user.tls_cn
        if user.disabled:
            entry["disabled"] = True
        users[name] = entry
    return {
        "version": 1,
        "settings": settings,
        "roles": {name: dump_role(role) for name, role in sorted(policy.roles.items())},
        "groups": {name: {"roles": list(g.roles)} for name, g in sorted(policy.groups.items())},
        "users": users,
    }
