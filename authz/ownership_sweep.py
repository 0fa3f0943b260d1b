"""Which ownership records outlived their objects, judged against what the daemon lists.

The plugin forgets an object's owner on the AuthZRes of its delete or of a prune that names it.
Some objects go without such a call: the daemon removes a ``docker run --rm`` (AutoRemove)
container on its own, exec instances go with their container, and a delete answered while the
store was down may never reach it. Their records stay; the table grows with every ``--rm`` run
and ``exec`` on a CI runner, and stale IDs make short ID prefixes ambiguous (refused).

``authzctl ownership prune`` reads the daemon's containers, networks and volumes, and the exec
IDs of each container, and forgets the records of what the daemon no longer has. A record newer
than the moment the listing began is kept: its object may have been created after it.

Pure: the daemon replies come in as decoded JSON; reading them is ``authz.daemon_api``'s job.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

__all__ = [
    "RECORDED_KINDS",
    "DaemonObjects",
    "SweptRecord",
    "container_ids",
    "exec_ids",
    "network_ids",
    "stale_records",
    "volume_names",
]


# The kinds of object whose creator is recorded (on the AuthZRes of their create), in display order.
RECORDED_KINDS = ("container", "network", "volume", "exec")


class SweptRecord(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def object_id(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


R = TypeVar("R", bound=SweptRecord)


@dataclass(frozen=True, slots=True)
class DaemonObjects:
    """What the daemon had when it was asked: container and network IDs, volume names, exec IDs."""

    containers: frozenset[str]
    networks: frozenset[str]
    volumes: frozenset[str]
    execs: frozenset[str] | None  # None: not read (no exec record to judge), every exec counts as present

    def has(self, kind: str, object_id: str) -> bool:
        """Whether the daemon still has it; a kind this sweep did not read counts as present."""
        known = {"container": self.containers, "network": self.networks, "volume": self.volumes, "exec": self.execs}
        present = known.get(kind)
        return True if present is None else object_id in present


def stale_records(records: Iterable[R], objects: DaemonObjects, listed_at: datetime) -> list[R]:
    """The records created before ``listed_at`` whose object the daemon no longer has."""
    return [r for r in records if r.created_at < listed_at and not objects.has(r.kind, r.object_id)]


class UnexpectedReply(ValueError):
    """A daemon reply is not shaped as the Engine API documents it: nothing may be judged on it."""


def _objects(reply: Any, what: str) -> Sequence[dict[str, Any]]:
    if not isinstance(reply, list) or not all(isinstance(item, dict) for item in reply):
        raise UnexpectedReply(f"{what}: expected a JSON array of objects")
    return reply


def _text(item: dict[str, Any], key: str, what: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise UnexpectedReply(f"{what}: an entry without a {key} string")
    return value


def container_ids(reply: Any) -> frozenset[str]:
    """``GET /containers/json?all=1``: every container's full ID."""
    return frozenset(_text(item, "Id", "container list") for item in _objects(reply, "container list"))


def network_ids(reply: Any) -> frozenset[str]:
    """``GET /networks``: every network's full ID."""
    return frozenset(_text(item, "Id", "network list") for item in _objects(reply, "network list"))


def volume_names(reply: Any) -> frozenset[str]:
    """``GET /volumes``: every volume's name. A listing with warnings (a volume driver that did not
    answer) may be partial, and a volume missing from it is not known to be gone: refused."""
    if not isinstance(reply, dict):
        raise UnexpectedReply("volume list: expected a JSON object")
    warnings = reply.get("Warnings")
    if warnings:
        raise UnexpectedReply(f"volume list may be incomplete, the daemon warned: {warnings}")
    volumes = reply.get("Volumes")
    return frozenset(_text(item, "Name", "volume list") for item in _objects(volumes or [], "volume list"))


def exec_ids(inspect_reply: Any) -> frozenset[str]:
    """``GET /containers/{id}/json``: the container's ``ExecIDs`` (null when it has none)."""
    if not isinstance(inspect_reply, dict):
        raise UnexpectedReply("container inspect: expected a JSON object")
    ids = inspect_reply.get("ExecIDs")
    if ids is None:
        return frozenset()
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise UnexpectedReply("container inspect: ExecIDs is not a list of strings")
    return frozenset(ids)
