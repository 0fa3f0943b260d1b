"""In-memory implementations of the ports: for unit tests and the policy simulator (stdlib only)."""

from __future__ import annotations

from threading import Lock

from authz.audit import AuditEvent
from authz.policy.model import Policy, PolicySnapshot
from authz.ports import EXACT_ONLY_KINDS


class StaticPolicySource:
    """A fixed policy; ``replace`` installs a new revision (as an apply would)."""

    def __init__(self, policy: Policy, revision: int = 1, revoked: frozenset[str] = frozenset()) -> None:
        self._snapshot = PolicySnapshot(revision=revision, policy=policy, revoked_tokens=revoked)

    def current(self, at_least: int = 0) -> PolicySnapshot:
        return self._snapshot

    def last_known(self, at_least: int = 0) -> PolicySnapshot:
        return self._snapshot

    def replace(self, policy: Policy, revoked: frozenset[str] = frozenset()) -> None:
        self._snapshot = PolicySnapshot(self._snapshot.revision + 1, policy, revoked_tokens=revoked)


class MemoryAuditSink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self._lock = Lock()

    def write(self, event: AuditEvent) -> None:
        with self._lock:
            self.events.append(event)


class MemoryOwnership:
    """Resolves references like the daemon: full id, then exact name, then unique id prefix."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str], tuple[str | None, str]] = {}  # (kind, id) -> (name, owner)
        self._lock = Lock()

    def _resolve(self, kind: str, reference: str) -> str | None:
        reference = reference.removeprefix("/") if kind == "container" else reference
        if (kind, reference) in self._objects:
            return reference
        if kind in EXACT_ONLY_KINDS:
            return None
        for (k, object_id), (name, _owner) in self._objects.items():
            if k == kind and name == reference:
                return object_id
        matches = [oid for (k, oid) in self._objects if k == kind and oid.startswith(reference)]
        return matches[0] if len(matches) == 1 and reference else None

    def owner_of(self, kind: str, reference: str) -> str | None:
        with self._lock:
            object_id = self._resolve(kind, reference)
            return self._objects[(kind, object_id)][1] if object_id else None

    def record(self, kind: str, object_id: str, name: str | None, owner: str) -> None:
        with self._lock:
            self._objects[(kind, object_id)] = (name.removeprefix("/") if name else name, owner)

    def forget(self, kind: str, reference: str) -> None:
        with self._lock:
            object_id = self._resolve(kind, reference)
            if object_id:
                del self._objects[(kind, object_id)]

    def forget_named(self, kind: str, name: str) -> None:
        with self._lock:
            for key, (stored, _owner) in list(self._objects.items()):
                if key[0] == kind and stored == name:
                    del self._objects[key]

    def rename(self, kind: str, reference: str, new_name: str) -> None:
        with self._lock:
            object_id = self._resolve(kind, reference)
            if object_id:
                owner = self._objects[(kind, object_id)][1]
                self._objects[(kind, object_id)] = (new_name.removeprefix("/"), owner)
