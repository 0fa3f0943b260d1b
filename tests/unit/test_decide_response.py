"""AuthZRes: the creator of what already ran is recorded, and audited, even while the store fails."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime

from authz.decide import Authorizer
from authz.errors import StoreError
from authz.memory import MemoryAuditSink, MemoryOwnership
from authz.policy.model import PolicySnapshot
from authz.policy.schema import parse_policy
from authz.request import Decision, DockerRequest, Phase

POLICY = parse_policy({"version": 1, "users": {"alice": {"roles": ["developer"], "tls_cn": "alice"}}})
CONTAINER_ID = "c0ffee" * 10 + "abcd"


class RefusingSource:
    """The store is down under AUTHZ_ON_STORE_ERROR=deny: no new decisions, the last snapshot kept."""

    def current(self, at_least: int = 0) -> PolicySnapshot:
        raise StoreError("the policy store failed: down; AUTHZ_ON_STORE_ERROR=deny refuses to decide without it")

    def last_known(self, at_least: int = 0) -> PolicySnapshot:
        return PolicySnapshot(revision=3, policy=POLICY)


def create_response() -> DockerRequest:
    body = json.dumps({"Image": "tiny"}).encode()
    return DockerRequest(
        method="POST",
        uri="/v1.41/containers/create?name=web",
        headers={"Content-Type": "application/json", "Content-Length": str(len(body))},
        body=body,
        user="alice",
        auth_method="TLS",
        phase=Phase.RESPONSE,
        status_code=201,
        response_body=base64.b64decode(base64.b64encode(json.dumps({"Id": CONTAINER_ID}).encode())),
    )


def test_the_creator_is_recorded_while_new_decisions_are_refused() -> None:
    audit, ownership = MemoryAuditSink(), MemoryOwnership()
    authorizer = Authorizer(RefusingSource(), audit, ownership=ownership)
    decision = authorizer.observe_response(create_response())
    assert decision.allow
    assert ownership.owner_of("container", "web") == "alice"
    (event,) = audit.events
    assert (event.phase, event.user, event.action) == ("response", "alice", "container:create")
    assert "owned by alice" in event.reason


def test_a_store_with_no_policy_at_all_still_audits_the_response() -> None:
    class Empty(RefusingSource):
        def last_known(self, at_least: int = 0) -> PolicySnapshot:
            raise StoreError("no policy loaded and the store failed: down")

    audit, ownership = MemoryAuditSink(), MemoryOwnership()
    decision = Authorizer(Empty(), audit, ownership=ownership).observe_response(create_response())
    assert decision.allow  # the call already ran; a deny cannot undo it
    assert ownership.owner_of("container", "web") is None
    (event,) = audit.events
    assert event.user == "alice"  # the daemon's TLS name, though no policy maps it
    assert "no policy loaded" in event.reason


def test_request_and_response_of_one_call_share_the_request_id() -> None:
    from dataclasses import replace

    from authz.memory import StaticPolicySource

    audit = MemoryAuditSink()
    authorizer = Authorizer(StaticPolicySource(POLICY), audit, ownership=MemoryOwnership())
    response = create_response()
    authorizer.authorize(replace(response, phase=Phase.REQUEST, status_code=None, response_body=None))
    authorizer.observe_response(response)
    other = replace(response, body=b'{"Image": "other"}', headers={**response.headers, "Content-Length": "18"})
    authorizer.observe_response(other)
    first, second, third = audit.events
    assert (first.phase, second.phase) == ("request", "response")
    assert first.request_id == second.request_id
    assert third.request_id != first.request_id  # another body is another call


def test_a_response_reads_the_network_name_from_the_request_body_and_decodes_no_other_body() -> None:
    from dataclasses import replace

    from authz.classify import classify
    from authz.memory import StaticPolicySource

    network = replace(
        create_response(),
        uri="/v1.41/networks/create",
        body=b'{"name": "team-net", "Driver": "bridge"}',  # Go matches field names case-insensitively
        headers={"Content-Type": "application/json", "Content-Length": "40"},
        response_body=json.dumps({"Id": "n" * 64, "Warning": ""}).encode(),
    )
    ownership = MemoryOwnership()
    authorizer = Authorizer(StaticPolicySource(POLICY), MemoryAuditSink(), ownership=ownership)
    assert authorizer.observe_response(network).allow
    assert ownership.owner_of("network", "team-net") == "alice"
    assert ownership.owner_of("network", "n" * 64) == "alice"

    operation = classify(create_response(), views=False)  # the response phase: judged already
    assert operation.body is None
    assert operation.view is None
    assert operation.body_digest == classify(replace(create_response(), phase=Phase.REQUEST)).body_digest


# ---------------------------------------------------------------- prunes


def _prune_response(uri: str, reply: object, status: int = 200) -> DockerRequest:
    return DockerRequest(method="POST", uri=uri, headers={"Content-Length": "0"}, user="alice", auth_method="TLS",
                         phase=Phase.RESPONSE, status_code=status,
                         response_body=json.dumps(reply).encode())  # fmt: skip


def test_a_container_prune_forgets_the_containers_its_reply_lists() -> None:
    """The captured `docker system prune` reply: ten container IDs. A container the daemon kept stays."""
    from authz.memory import StaticPolicySource
    from tests.support.captures import capture_request

    response = capture_request("system-prune__02_POST_containers-prune", "response")
    pruned = json.loads(response.response_body or b"")["ContainersDeleted"]
    audit, ownership = MemoryAuditSink(), MemoryOwnership()
    for container_id in pruned:
        ownership.record("container", container_id, None, "alice")
    ownership.record("container", CONTAINER_ID, "kept", "alice")
    authorizer = Authorizer(StaticPolicySource(POLICY), audit, ownership=ownership)
    assert authorizer.records_response("POST", response.uri)
    assert authorizer.observe_response(response).allow
    assert [ownership.owner_of("container", c) for c in pruned] == [None] * 10
    assert ownership.owner_of("container", "kept") == "alice"
    (event,) = audit.events
    assert (event.phase, event.action) == ("response", "container:prune")
    assert event.reason.startswith("10 pruned container record(s) forgotten: 361a1afc30ea, b0f5a860866a")


def test_network_and_volume_prunes_forget_by_exact_name() -> None:
    from authz.memory import StaticPolicySource

    ownership = MemoryOwnership()
    ownership.record("network", "beef" + "0" * 60, "cafe", "alice")
    ownership.record("network", "cafe" + "0" * 60, "backend", "alice")
    ownership.record("volume", "data2", "data2", "alice")
    ownership.record("volume", "cache", "cache", "alice")
    authorizer = Authorizer(StaticPolicySource(POLICY), MemoryAuditSink(), ownership=ownership)
    authorizer.observe_response(_prune_response("/v1.41/networks/prune", {"NetworksDeleted": ["cafe"]}))
    authorizer.observe_response(_prune_response("/v1.41/volumes/prune", {"VolumesDeleted": ["data", "cache"]}))
    assert ownership.owner_of("network", "beef" + "0" * 60) is None  # the network named "cafe" is gone
    assert ownership.owner_of("network", "backend") == "alice"  # the one whose ID starts with "cafe" is not
    assert ownership.owner_of("volume", "cache") is None
    assert ownership.owner_of("volume", "data2") == "alice"  # "data" is no prefix of it for the daemon


def test_a_prune_that_failed_or_removed_nothing_forgets_nothing() -> None:
    from authz.memory import StaticPolicySource

    audit, ownership = MemoryAuditSink(), MemoryOwnership()
    ownership.record("container", CONTAINER_ID, "web", "alice")
    authorizer = Authorizer(StaticPolicySource(POLICY), audit, ownership=ownership)
    replies = [({"ContainersDeleted": [CONTAINER_ID]}, 500), ({"ContainersDeleted": None}, 200),
               ({"ContainersDeleted": [CONTAINER_ID, 7]}, 200), ({"ContainersDeleted": CONTAINER_ID}, 200),
               (["not", "an", "object"], 200)]  # fmt: skip
    decisions = [authorizer.observe_response(_prune_response("/v1.41/containers/prune", reply, status))
                 for reply, status in replies]  # fmt: skip
    assert all(decision.allow for decision in decisions)
    assert ownership.owner_of("container", "web") == "alice"
    assert decisions[0].reason == "response phase: status 500, nothing recorded"
    reasons = [event.reason for event in audit.events]  # the failed prune's record is the server's
    unreadable = "container prune reply has no list of strings in ContainersDeleted: nothing forgotten"
    assert reasons == ["container prune removed nothing", unreadable, unreadable, "container prune removed nothing"]


def test_a_prune_stops_forgetting_when_the_store_fails_and_says_what_is_left() -> None:
    from authz.memory import StaticPolicySource

    class FailingAfterOne(MemoryOwnership):
        def forget(self, kind: str, reference: str) -> None:
            if reference == "v2":
                raise StoreError("the store did not take the ownership change in time; queued, retrying")
            super().forget(kind, reference)

    audit, ownership = MemoryAuditSink(), FailingAfterOne()
    for name in ("v1", "v2", "v3"):
        ownership.record("volume", name, name, "alice")
    authorizer = Authorizer(StaticPolicySource(POLICY), audit, ownership=ownership)
    reply = {"VolumesDeleted": ["v1", "v2", "v3"]}
    assert authorizer.observe_response(_prune_response("/v1.41/volumes/prune", reply)).allow
    assert [ownership.owner_of("volume", v) for v in ("v1", "v2", "v3")] == [None, "alice", "alice"]
    (event,) = audit.events
    assert event.reason.startswith("1 of 3 pruned volume record(s) forgotten, then the store failed")
    assert event.reason.endswith("`authzctl ownership prune` forgets the rest")


# ---------------------------------------------------------------- reads judged on their answer

POLICY2 = parse_policy({"version": 1, "users": {"alice": {"roles": ["developer"], "tls_cn": "alice"},
                                                "bob": {"roles": ["developer"], "tls_cn": "bob"}}})  # fmt: skip


def _inspect(uri: str, status: int | None, answer: object, user: str = "alice") -> tuple[DockerRequest, DockerRequest]:
    request = DockerRequest(method="GET", uri=uri, user=user, auth_method="TLS")
    body = None if answer is None else json.dumps(answer).encode()
    response = DockerRequest(method="GET", uri=uri, user=user, auth_method="TLS", phase=Phase.RESPONSE,
                             status_code=status, response_body=body)  # fmt: skip
    return request, response


def _authorizer(ownership: MemoryOwnership) -> tuple[Authorizer, MemoryAuditSink]:
    from authz.memory import StaticPolicySource

    audit = MemoryAuditSink()
    return Authorizer(StaticPolicySource(POLICY2), audit, ownership=ownership), audit


def test_an_inspect_of_a_missing_volume_goes_to_the_daemon() -> None:
    """docker-compose inspects `proj_data` before it creates it: the daemon's 404 is the answer."""
    authorizer, audit = _authorizer(MemoryOwnership())
    request, response = _inspect("/v1.41/volumes/proj_data", 404, {"message": "get proj_data: no such volume"})
    decision = authorizer.authorize(request)
    assert decision.allow
    assert "volume 'proj_data' has no recorded owner: the daemon's answer is judged (AuthZRes)" in decision.reason
    assert authorizer.records_response("GET", response.uri)
    assert authorizer.observe_response(response).allow
    assert [event.phase for event in audit.events] == ["request"]  # the allowed answer adds no record


def test_the_answer_naming_an_object_with_no_owner_is_withheld() -> None:
    """The same request, but the volume exists (made before the plugin): its answer is denied."""
    authorizer, audit = _authorizer(MemoryOwnership())
    request, response = _inspect("/v1.41/volumes/old", 200, {"Name": "old", "Mountpoint": "/var/lib/docker/x"})
    assert authorizer.authorize(request).allow
    decision = authorizer.observe_response(response)
    assert not decision.allow
    assert decision.message == (
        "authz: denied volume:inspect for alice (roles: developer): volume 'old' is an object created before the "
        "plugin or by another process; role developer may act only on objects you created (ownership: own) "
        "[rule roles.developer.ownership, field volume 'old'] (asked for as 'old'; judged on the daemon's answer)"
    )
    event = audit.events[-1]
    assert (event.phase, event.allow, event.action, event.user) == ("response", False, "volume:inspect", "alice")
    assert event.request_id == audit.events[0].request_id


def test_an_answer_is_judged_by_the_full_id_it_names() -> None:
    """A name with no record may still be someone's container (here the record lost its name):
    the Id in the answer decides."""
    ownership = MemoryOwnership()
    ownership.record("container", CONTAINER_ID, None, "bob")
    authorizer, _audit = _authorizer(ownership)
    request, response = _inspect("/v1.41/containers/bobs/json", 200, {"Id": CONTAINER_ID, "Name": "/bobs"})
    assert authorizer.authorize(request).allow
    denied = authorizer.observe_response(response)
    assert not denied.allow
    assert "is owned by another user" in denied.message
    ownership.record("container", "a" * 64, "mine", "alice")
    _request, mine = _inspect("/v1.41/containers/mine/json", 200, {"Id": "a" * 64, "Name": "/mine"})
    assert authorizer.observe_response(mine).allow


def test_an_owned_object_is_still_refused_at_the_request() -> None:
    ownership = MemoryOwnership()
    ownership.record("network", "n" * 64, "bobnet", "bob")
    authorizer, _audit = _authorizer(ownership)
    request, _response = _inspect("/v1.41/networks/bobnet", 200, {"Id": "n" * 64, "Name": "bobnet"})
    decision = authorizer.authorize(request)
    assert not decision.allow
    assert "is owned by another user" in decision.message


def test_predefined_networks_and_execs_are_named_as_requests_name_them() -> None:
    ownership = MemoryOwnership()
    ownership.record("exec", "e" * 64, None, "alice")
    authorizer, _audit = _authorizer(ownership)
    _request, none_net = _inspect("/v1.41/networks/none", 200, {"Id": "f" * 64, "Name": "none"})
    assert authorizer.observe_response(none_net).allow
    _request, exec_answer = _inspect(f"/v1.41/exec/{'e' * 64}/json", 200, {"ID": "e" * 64, "Running": False})
    assert authorizer.observe_response(exec_answer).allow


def test_an_answer_that_cannot_be_judged_is_withheld() -> None:
    """An unreadable answer is withheld as a payload fault; a refused identity as at AuthZReq."""
    authorizer, audit = _authorizer(MemoryOwnership())
    _request, not_json = _inspect("/v1.41/volumes/x", 200, None)
    not_json = replace(not_json, response_body=b"{not json")
    for response in (not_json, *(_inspect("/v1.41/volumes/x", 200, a)[1] for a in ([1, 2], {"Name": ""}, {"Id": 5}))):
        decision = authorizer.observe_response(response)
        assert not decision.allow
        assert "could not be judged" in decision.message
        assert str(decision.error).startswith("RequestError("), decision.error
    _request, nobody = _inspect("/v1.41/volumes/x", 200, {"Name": "x"}, user="mallory")  # no such user
    refused = authorizer.observe_response(nobody)
    assert not refused.allow
    assert refused.message.startswith("authz: denied volume:inspect: identity rejected: "), refused.message
    assert (refused.rule, refused.error) == ("identity", None)
    assert all(not event.allow for event in audit.events)


def test_a_withheld_answer_is_counted_as_a_denial() -> None:
    from authz.memory import StaticPolicySource

    seen: list[tuple[bool, str, str | None]] = []

    def observe(decision: Decision, action: str, _seconds: float) -> None:
        seen.append((decision.allow, action, decision.role))

    owners = MemoryOwnership()
    authorizer = Authorizer(StaticPolicySource(POLICY2), MemoryAuditSink(), ownership=owners, observer=observe)
    request, response = _inspect("/v1.41/volumes/old", 200, {"Name": "old"})
    authorizer.authorize(request)
    authorizer.observe_response(response)
    assert seen == [(True, "volume:inspect", "developer"), (False, "volume:inspect", "developer")]


# ---------------------------------------------------------------- creating a volume that exists

ADMINS = parse_policy({"version": 1, "users": {"alice": {"roles": ["developer"], "tls_cn": "alice"},
                                               "root": {"roles": ["admin"], "tls_cn": "root"}}})  # fmt: skip
NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC).timestamp()


def _volume_created(name: str, created: str | None, user: str = "alice") -> DockerRequest:
    body = json.dumps({"Name": name}).encode()
    answer: dict[str, object] = {"Name": name, "Driver": "local", "Mountpoint": f"/var/lib/docker/volumes/{name}/_data"}
    if created is not None:
        answer["CreatedAt"] = created
    return DockerRequest(method="POST", uri="/v1.41/volumes/create", user=user, auth_method="TLS", body=body,
                         headers={"Content-Type": "application/json", "Content-Length": str(len(body))},
                         phase=Phase.RESPONSE, status_code=201, response_body=json.dumps(answer).encode())  # fmt: skip


def _volumes(ownership: MemoryOwnership) -> tuple[Authorizer, MemoryAuditSink]:
    from authz.memory import StaticPolicySource

    audit = MemoryAuditSink()
    return Authorizer(StaticPolicySource(ADMINS), audit, ownership=ownership, clock=lambda: NOW), audit


def test_a_new_volume_is_recorded_as_its_creators() -> None:
    ownership = MemoryOwnership()
    authorizer, _audit = _volumes(ownership)
    assert authorizer.observe_response(_volume_created("fresh", "2026-11-30T11:59:59Z")).allow
    assert ownership.owner_of("volume", "fresh") == "alice"


def test_creating_a_volume_made_before_the_plugin_does_not_make_it_yours() -> None:
    """The daemon answers 201 with an existing volume, unchanged: its CreatedAt is old."""
    ownership = MemoryOwnership()
    authorizer, audit = _volumes(ownership)
    decision = authorizer.observe_response(_volume_created("pgdata", "2026-11-02T08:00:00Z"))
    assert not decision.allow
    assert decision.message == (
        "authz: denied volume:create for alice (roles: developer): volume 'pgdata' already exists and is not "
        "recorded as created by anyone (made before the plugin, or by the daemon); creating it would not make it "
        "yours: role developer may use only volumes you created (ownership: own) [rule roles.developer.ownership, "
        "field Name] (judged on the daemon's answer: volume 'pgdata' already existed, created 2026-11-02T08:00:00Z)"
    )
    assert ownership.owner_of("volume", "pgdata") is None
    assert (audit.events[-1].phase, audit.events[-1].allow) == ("response", False)


def test_creating_someone_elses_volume_again_is_refused_and_an_answer_without_a_time_counts_as_old() -> None:
    ownership = MemoryOwnership()
    ownership.record("volume", "shared", "shared", "bob")
    authorizer, _audit = _volumes(ownership)
    decision = authorizer.observe_response(_volume_created("shared", None))
    assert not decision.allow
    assert "volume 'shared' already exists and is owned by another user;" in decision.message
    assert decision.message.endswith("already existed, its answer gives no creation time)")
    assert ownership.owner_of("volume", "shared") == "bob"


def test_your_own_volume_and_an_admin_may_create_it_again_without_a_new_record() -> None:
    ownership = MemoryOwnership()
    ownership.record("volume", "mine", "mine", "alice")
    authorizer, _audit = _volumes(ownership)
    assert authorizer.observe_response(_volume_created("mine", "2026-11-01T00:00:00Z")).allow
    admin = authorizer.observe_response(_volume_created("pgdata", "2026-11-01T00:00:00Z", user="root"))
    assert admin.allow
    assert admin.reason.startswith("volume 'pgdata' already existed (created 2026-11-01T00:00:00Z): nothing recorded;")
    assert ownership.owner_of("volume", "pgdata") is None
