"""Judging ownership records against the daemon's objects (authz.ownership_sweep): replies as the
daemon shapes them (captured where the captures hold them), and the refusals that keep a partial
or unreadable listing from forgetting anyone's objects."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from authz.ownership_sweep import (
    DaemonObjects,
    UnexpectedReply,
    container_ids,
    exec_ids,
    network_ids,
    stale_records,
    volume_names,
)
from tests.support.captures import capture_request

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Record:
    kind: str
    object_id: str
    created_at: datetime


def _reply(capture: str) -> object:
    return json.loads(capture_request(capture, "response").response_body or b"")


def test_captured_listings_are_read() -> None:
    assert network_ids(_reply("network-ls__02_GET_networks")) == {
        item["Id"]
        for item in _reply("network-ls__02_GET_networks")  # type: ignore[attr-defined]
    }
    volumes = _reply("volume-ls__02_GET_volumes")
    assert volume_names(volumes) == {v["Name"] for v in volumes["Volumes"] or []}  # type: ignore[index]
    assert exec_ids(_reply("inspect__02_GET_containers-box-json")) == frozenset()  # ExecIDs: null


def test_listings_in_the_shapes_the_api_documents() -> None:
    assert container_ids([{"Id": "a" * 64, "Names": ["/web"]}, {"Id": "b" * 64}]) == {"a" * 64, "b" * 64}
    assert container_ids([]) == frozenset()
    assert volume_names({"Volumes": None, "Warnings": None}) == frozenset()
    assert volume_names({"Volumes": [{"Name": "data"}], "Warnings": []}) == {"data"}
    assert exec_ids({"Id": "c" * 64, "ExecIDs": ["e1", "e2"]}) == {"e1", "e2"}


@pytest.mark.parametrize(
    ("reader", "reply"),
    [
        (container_ids, {"Id": "a"}),  # an object, not an array
        (container_ids, [{"Names": ["/x"]}]),  # an entry without its ID
        (container_ids, [{"Id": ""}]),
        (network_ids, None),
        (network_ids, ["n1"]),
        (volume_names, [{"Name": "v"}]),
        (volume_names, {"Volumes": [{"Name": 7}]}),
        (volume_names, {"Volumes": [{"Name": "v"}], "Warnings": ["driver nfs: timeout"]}),  # maybe partial
        (exec_ids, {"ExecIDs": "e1"}),
        (exec_ids, {"ExecIDs": [None]}),
        (exec_ids, []),
    ],
)
def test_a_reply_not_shaped_as_documented_is_refused(reader: object, reply: object) -> None:
    with pytest.raises(UnexpectedReply):
        reader(reply)  # type: ignore[operator]


def test_stale_records_are_the_old_ones_the_daemon_no_longer_has() -> None:
    objects = DaemonObjects(frozenset({"c1"}), frozenset({"n1"}), frozenset({"v1"}), frozenset({"e1"}))
    old, new = T0 - timedelta(seconds=1), T0 + timedelta(milliseconds=1)
    records = [
        Record("container", "c1", old), Record("container", "c2", old), Record("container", "c3", new),
        Record("network", "n1", old), Record("network", "n2", old),
        Record("volume", "v1", old), Record("volume", "v2", old),
        Record("exec", "e1", old), Record("exec", "e2", old), Record("exec", "e3", T0),
        Record("plugin", "p1", old),  # a kind the sweep does not list: kept
    ]  # fmt: skip
    stale = stale_records(records, objects, T0)
    assert [(r.kind, r.object_id) for r in stale] == [
        ("container", "c2"), ("network", "n2"), ("volume", "v2"), ("exec", "e2"),
    ]  # fmt: skip
    unread = DaemonObjects(objects.containers, objects.networks, objects.volumes, None)
    assert [r.object_id for r in stale_records(records, unread, T0)] == ["c2", "n2", "v2"]  # execs not read: kept
