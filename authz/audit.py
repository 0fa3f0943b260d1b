"""Audit events: what is recorded for every decision, and what is never recorded.

An ``AuditEvent`` is built by the core for every AuthZReq decision (and AuthZRes correlation) and
handed to an ``AuditSink`` before the reply goes back to the daemon. Secrets never reach it: request
bodies are reduced to a digest, query values of secret-bearing parameters are masked, and no header
value but the token's id is kept.

Audit levels (``AUTHZ_AUDIT_LEVEL``, like Kubernetes' audit policy levels):

* ``metadata`` (default): who, what, the decision, the redacted URI and the body digest.
* ``request``: also ``detail`` = ``request_detail(operation)``, an allow-list summary of the
  security-relevant body fields of the routes whose bodies we read (container create/update, exec,
  network, volume, service). Never included: ``Env`` values, ``Cmd`` arguments, labels, volume or
  network driver option values, ``/auth`` bodies, secret/config ``Data``, query values of
  secret-bearing parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from authz.audit_chain import canonical_event, record_hash
from authz.classify.bodies import ExecCreate, NetworkConnect, NetworkCreate, ServiceSpec, VolumeCreate
from authz.classify.containers import BindSpec, ContainerCreate, ContainerUpdate, MountSpec
from authz.classify.routes import ROUTES
from authz.errors import ConfigError
from authz.gojson import GoObject
from authz.request import Operation

REDACTED = "<redacted>"
AUDIT_LEVELS = ("metadata", "request")

# Query parameters whose values can carry credentials or secret material (build args are the
# documented way people pass tokens into builds).
_SECRET_QUERY_KEYS = frozenset({"password", "token", "secret", "registryauth", "x-registry-auth", "buildargs"})
# Routes whose request body carries credentials or secret data: no body field is ever summarised.
_SENSITIVE_ROUTES = frozenset(route.pattern for route in ROUTES if route.sensitive)


@dataclass(slots=True)
class AuditEvent:
    """One decision, as it is stored. Field names are the column names of the audit table.

    Not frozen, but treat it as read-only: one is built for every decision and written at once,
    and a frozen dataclass sets each of its 23 fields through ``object.__setattr__`` (9 µs against
    2.5 for this one, on the request path).
    """

    time: float  # epoch seconds
    request_id: str  # correlates AuthZReq and AuthZRes of the same API call
    node: str  # which plugin host decided
    phase: str  # "request" | "response"
    user: str | None  # None: anonymous
    source: str  # "tls" | "token" | "anonymous" | "unknown" (identity failed)
    roles: tuple[str, ...]
    action: str  # "container:create", or "unknown" when classification failed
    method: str
    uri: str  # redacted request URI
    object: str | None  # the object named in the path
    allow: bool
    mode: str  # "enforce" | "warn"
    rule: str | None
    role: str | None
    reason: str
    message: str
    warnings: tuple[str, ...] = ()
    error: str | None = None
    body_digest: str | None = None
    token_id: str | None = None
    status_code: int | None = None  # AuthZRes only
    detail: Mapping[str, Any] = field(default_factory=dict)  # level=request extras, already redacted

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values (a shallow copy: ``dataclasses.asdict`` deep-copies
        and costs ~10x more on the per-decision path)."""
        data = {name: getattr(self, name) for name in _FIELD_NAMES}
        data["roles"] = list(self.roles)
        data["warnings"] = list(self.warnings)
        data["detail"] = dict(self.detail)
        return data


_FIELD_NAMES = tuple(f.name for f in fields(AuditEvent))


def redact_uri(uri: str) -> str:
    """The URI with values of secret-bearing query parameters replaced."""
    path, sep, query = uri.partition("?")
    if not sep:
        return uri
    parts = []
    for pair in query.split("&"):
        key, eq, _value = pair.partition("=")
        # Compare the key as Go's ParseQuery decodes it: "%70assword" is "password" to the daemon.
        secret = unquote_plus(key).lower() in _SECRET_QUERY_KEYS
        parts.append(f"{key}={REDACTED}" if eq and secret else pair)
    return f"{path}?{'&'.join(parts)}"


def chain_hash(previous_hash: str, event: AuditEvent, chain: str, seq: int) -> str:
    """The record hash of ``event`` as record ``seq`` of ``chain`` (``authz.audit_chain``)."""
    return record_hash(previous_hash, chain, seq, canonical_event(event.to_dict()))


def audit_level(environ: Mapping[str, str]) -> str:
    """``AUTHZ_AUDIT_LEVEL`` (default ``metadata``); ``ConfigError`` naming the variable otherwise."""
    raw = environ.get("AUTHZ_AUDIT_LEVEL", "").strip().lower() or "metadata"
    if raw not in AUDIT_LEVELS:
        raise ConfigError(f"AUTHZ_AUDIT_LEVEL must be one of {', '.join(AUDIT_LEVELS)}, got {raw!r}")
    return raw


# ---------------------------------------------------------------- level "request": body summaries


def _query(operation: Operation) -> dict[str, Any]:
    return {key: REDACTED if key.lower() in _SECRET_QUERY_KEYS else list(values)
            for key, values in sorted(operation.query.items())}  # fmt: skip


def _mount(mount: MountSpec) -> dict[str, Any]:
    return {"type": mount.type, "source": mount.source, "target": mount.target, "read_only": mount.read_only}


def _bind(bind: BindSpec) -> dict[str, Any]:
    return {"source": bind.host_path or bind.volume, "target": bind.target, "read_only": bind.read_only}


def _container_create(view: ContainerCreate, body: Any) -> dict[str, Any]:
    env = body.field("Env") if isinstance(body, GoObject) else None
    env_names = sorted({str(item).partition("=")[0] for item in env}) if isinstance(env, list) else []
    return {
        "image": view.image,
        "user": view.user,
        "group_add": list(view.group_add),
        "privileged": view.privileged,
        "cap_add": list(view.cap_add),
        "cap_drop": list(view.cap_drop),
        "binds": [_bind(b) for b in view.binds],
        "mounts": [_mount(m) for m in view.mounts],
        "volumes_from": [v.raw for v in view.volumes_from],
        "network_mode": view.network_mode,
        "pid_mode": view.pid_mode,
        "ipc_mode": view.ipc_mode,
        "uts_mode": view.uts_mode,
        "userns_mode": view.userns_mode,
        "cgroupns_mode": view.cgroupns_mode,
        "cgroup_parent": view.cgroup_parent,
        "security_opt": [opt.raw for opt in view.security_opt],
        "devices": [d.path_on_host for d in view.devices],
        "device_requests": [{"driver": r.driver, "count": r.count} for r in view.device_requests],
        "ports": [f"{p.host_ip}:{p.host_port}->{p.container_port}" for p in view.port_bindings],
        "publish_all_ports": view.publish_all_ports,
        "sysctls": sorted(view.sysctls),
        "runtime": view.runtime,
        "readonly_rootfs": view.readonly_rootfs,
        "env_names": env_names,  # names only: values are where secrets live
    }


def _view_detail(view: Any, body: Any) -> dict[str, Any]:
    """Allow-list summaries of the typed views; anything else contributes nothing."""
    if isinstance(view, ContainerCreate):
        return _container_create(view, body)
    if isinstance(view, ContainerUpdate):
        return {"memory": view.memory, "nano_cpus": view.nano_cpus, "pids_limit": view.pids_limit,
                "devices": [d.path_on_host for d in view.devices]}  # fmt: skip
    if isinstance(view, ExecCreate):
        # The executable, not its arguments: arguments carry passwords as often as not.
        return {"user": view.user, "privileged": view.privileged, "tty": view.tty,
                "command": view.cmd[0] if view.cmd else "", "arguments": max(len(view.cmd) - 1, 0)}  # fmt: skip
    if isinstance(view, NetworkCreate):
        return {"name": view.name, "driver": view.effective_driver, "internal": view.internal,
                "attachable": view.attachable, "ingress": view.ingress, "options": sorted(view.options),
                "subnets": [c.subnet for c in view.ipam_configs]}  # fmt: skip
    if isinstance(view, NetworkConnect):
        return {"container": view.container}
    if isinstance(view, VolumeCreate):
        # Driver option values can hold mount credentials (CIFS password=…): keys only.
        return {"name": view.name, "driver": view.effective_driver, "options": sorted(view.driver_opts)}
    if isinstance(view, ServiceSpec):
        return {"name": view.name, "image": view.image, "user": view.user, "cap_add": list(view.cap_add),
                "mounts": [_mount(m) for m in view.mounts], "networks": [n.target for n in view.networks],
                "secrets": list(view.secrets), "configs": list(view.configs), "mode": view.mode,
                "plugin": view.plugin.remote if view.plugin else None}  # fmt: skip
    return {}


def request_detail(operation: Operation) -> dict[str, Any]:
    """The ``detail`` of an event at level ``request``: the query and a body summary, redacted.

    Bodies of sensitive routes (``Route.sensitive``: ``/auth``, secret and config writes, swarm
    init/join/unlock) are never summarised, whatever their view.
    """
    detail: dict[str, Any] = {"query": _query(operation)}
    if operation.route not in _SENSITIVE_ROUTES:
        detail.update(_view_detail(operation.view, operation.body))
    return detail


def parse_instant(text: str) -> float:
    """ISO 8601 (``2024-06-01``, ``2024-06-01T12:00:00Z``) or epoch seconds → epoch seconds.

    A time without a zone is UTC: audit records are compared in UTC, not in the local zone.
    Raises ``ValueError`` for anything else (callers phrase the message for their users).
    """
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    moment = datetime.fromisoformat(value)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
