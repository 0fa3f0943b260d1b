"""The role form: every key of a policy-v1 role as a form field, with help text, and back.

``FIELDS`` lists the fields section by section (the help text follows the comments of
policy-v1.md). ``form_values(role)`` fills the form from a ``Role``; ``role_document(form)``
turns a submitted form into the policy-v1 mapping of the role, which ``parse_role`` validates
exactly like a YAML file (errors name the key path, which ``field_of`` maps back to a field).

Unset means "inherit": a yes/no field offers "inherit", a list field a "set here" switch, a
number field may stay empty. What no role in the chain sets takes the restrictive default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authz.policy.model import Role
from authz.policy.schema import dump_role

__all__ = ["FIELDS", "SECTIONS", "Field", "field_of", "form_values", "role_document"]


@dataclass(frozen=True, slots=True)
class Field:
    key: str  # path inside the role: "containers.privileged"
    label: str
    kind: str  # text | bool | list | lines | size | number | int | choice | roles
    help: str
    choices: tuple[str, ...] = ()

    @property
    def section(self) -> str:
        return self.key.split(".")[0] if "." in self.key else "general"

    @property
    def name(self) -> str:
        return self.key.split(".")[-1]


SECTIONS = (
    ("general", "Role", "What the role is and which actions it allows."),
    ("containers", "Containers", "Checked on container:create and container:update."),
    ("exec", "Exec", "Checked when a command is run in a container (container:exec)."),
    ("images", "Images", "Which images the role may pull and run, and how images may be minted."),
    ("networks", "Networks", "Which networks the role may create and attach containers to."),
    ("volumes", "Volumes", "Which volumes the role may create."),
)

FIELDS: tuple[Field, ...] = (
    Field("description", "Description", "text", "Shown in lists; say who the role is for."),
    Field("extends", "Extends", "roles", "Inherit allow/deny and every constraint of these roles; "
          "this role's own settings win (cycles are errors)."),
    Field("mode", "Mode", "choice", "enforce: deny what the role does not allow. warn: allow, but audit what "
          "would have been denied (trial a stricter role). Inherit: settings.default_mode.", ("enforce", "warn")),
    Field("allow", "Allowed actions", "lines", 'One action per line: "container:create", a whole resource '
          '"image:*", or "*" for everything.'),
    Field("deny", "Denied actions", "lines", "One action per line. Deny beats allow, in every role a user has."),
    Field("ownership", "Ownership", "choice", "own: act only on containers, networks, volumes and execs the user "
          "created. any: on everyone's. Inherit: own.", ("own", "any")),
    Field("containers.privileged", "Privileged", "bool", "May run --privileged containers (full host access)."),
    Field("containers.capabilities", "Capabilities", "list", 'The only CapAdd values allowed, e.g. NET_BIND_SERVICE '
          '("CAP_" prefix and case ignored). Empty: none.'),
    Field("containers.host_namespaces", "Host namespaces", "bool", 'network/pid/ipc/uts/userns/cgroupns "host", and '
          "joining other containers' namespaces."),
    Field("containers.bind_mounts", "Bind-mount prefixes", "list", "Host path prefixes allowed as bind sources, "
          "e.g. /srv/shared. Empty: no bind mounts."),
    Field("containers.bind_mounts_read_only", "Bind mounts read-only", "bool",
          "Allowed bind mounts must be read-only."),
    Field("containers.bind_mounts_user_writable", "Bind through user-writable dirs", "bool",
          "Allow bind sources whose path runs through a directory a non-root user can write: that user "
          "could swap an entry for a symlink to / before the container starts. No: only paths root controls."),
    Field("containers.devices", "Devices", "bool", "Devices, device cgroup rules and device requests (GPUs)."),
    Field("containers.unconfined", "Unconfined", "bool", "seccomp/apparmor unconfined, label=disable, "
          "systempaths=unconfined, writable cgroups."),
    Field("containers.run_as_root", "Run as root", "bool", "No: the container's user (--user, or the image's USER) "
          "must name a non-root user."),
    Field("containers.published_ports", "Published host ports", "list", 'Host ports allowed: 8080, a range '
          '8000-8999, or * for any. Empty: none. -P (publish all) needs "*".'),
    Field("containers.sysctls", "Sysctls", "list", "Sysctl keys allowed (--sysctl). Empty: none."),
    Field("containers.runtimes", "Runtimes", "list", "OCI runtimes allowed (--runtime), e.g. runc."),
    Field("containers.max_memory", "Max memory", "size", "Largest --memory, e.g. 512m or 4g."),
    Field("containers.max_cpus", "Max CPUs", "number", "Largest --cpus, e.g. 2 or 0.5."),
    Field("containers.max_pids", "Max PIDs", "int", "Largest --pids-limit."),
    Field("containers.require_limits", "Require limits", "bool", "The request must set memory, CPU and PID limits "
          "within the maxima above."),
    Field("exec.privileged", "Privileged exec", "bool", "May run docker exec --privileged."),
    Field("exec.run_as_root", "Exec as root", "bool",
          "May run docker exec as root (-u root, or no -u in a root container)."),
    Field("images.allow", "Allowed images", "list", "Normalised reference patterns, e.g. docker.io/library/* or "
          "registry.example.com/team/**. Empty: none."),
    Field("images.require_digest", "Require digest", "bool", "Images must be named by digest (@sha256:…)."),
    Field("images.local_builds", "Local builds", "bool", "build, commit, import, load and tag: ways to mint an image "
          "name without pulling it."),
    Field("networks.create", "Networks it may create", "list", "Name patterns, e.g. dev-*."),
    Field("networks.drivers", "Network drivers", "list", "Drivers allowed for new networks, e.g. bridge."),
    Field("networks.use", "Networks it may use", "list", "NetworkMode, endpoints and network connect, e.g. dev-*, "
          "none."),
    Field("volumes.drivers", "Volume drivers", "list", "Drivers allowed for new volumes, e.g. local."),
    Field("volumes.driver_opts", "Volume driver options", "bool", "local volumes with o=bind,device=/… are host "
          "binds: allow only when the role may bind-mount anyway."),
)  # fmt: skip

_BY_KEY = {f.key: f for f in FIELDS}
_INDEX = re.compile(r"\[\d+\]")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def form_values(role: Role | None) -> dict[str, Any]:
    """Field key → form value (``bool``: "", "true", "false"; ``list``: {"set": bool, "text": str})."""
    doc = dump_role(role) if role is not None else {"allow": []}
    values: dict[str, Any] = {}
    for f in FIELDS:
        value: Any = doc
        for part in f.key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if f.kind == "bool":
            values[f.key] = "" if value is None else ("true" if value else "false")
        elif f.kind == "list":
            values[f.key] = {"set": value is not None, "text": "\n".join(str(v) for v in value or [])}
        elif f.kind == "lines":
            values[f.key] = "\n".join(value or [])
        elif f.kind == "roles":
            values[f.key] = list(value or [])
        else:
            values[f.key] = "" if value is None else str(value)
    return values


def role_document(form: Mapping[str, Any]) -> dict[str, Any]:
    """A submitted form (``request.form``-like: ``get`` and ``getlist``) → the role's mapping.

    Values are passed on as typed as a form allows (numbers parsed, text kept); ``parse_role``
    then judges them, so the form accepts exactly what a YAML role file would.
    """
    doc: dict[str, Any] = {}
    for f in FIELDS:
        value = _read(f, form)
        if value is None:
            continue
        target = doc
        *parents, last = f.key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    doc.setdefault("allow", [])
    return doc


def _read(f: Field, form: Any) -> Any:
    raw = form.get(f.key, "")
    if f.kind == "bool":
        return {"true": True, "false": False}.get(raw)
    if f.kind == "list":
        return _lines(raw) if form.get(f"{f.key}.set") == "on" else None
    if f.kind == "lines":
        return _lines(raw)
    if f.kind == "roles":
        return sorted({value for value in form.getlist(f.key) if value}) or None
    text = raw.strip()
    if not text:
        return None
    if f.kind in ("number", "int"):
        try:
            return int(text) if re.fullmatch(r"-?\d+", text) else float(text)
        except ValueError:
            return text  # parse_role names the field and what it expected
    return text


def field_of(path: str, role_name: str) -> str | None:
    """The field key a ``PolicyError`` path points at (``roles.r.containers.capabilities[2]``)."""
    prefix = f"roles.{role_name}."
    if not path.startswith(prefix):
        return None
    key = _INDEX.sub("", path[len(prefix) :])
    return key if key in _BY_KEY else None
