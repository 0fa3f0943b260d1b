"""The Authorizer: classify → identify → evaluate → audit, for every call from the daemon.

Whatever goes wrong, the answer is a deny with the reason; nothing but a completed evaluation can
produce an allow, and no decision is returned before its audit record is written.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson

from authz import gojson
from authz.audit import AuditEvent, redact_uri, request_detail
from authz.classify import classify, route_action
from authz.errors import AuthzError, IdentityError, RequestError, StoreError
from authz.identity.resolve import TOKEN_HEADER, DirectoryIndex, identify, token_claims
from authz.policy.compiled import CompiledCache
from authz.policy.engine import (
    PING,
    PREDEFINED_NETWORKS,
    RESPONSE_JUDGED_READS,
    denial_message,
    evaluate,
)
from authz.policy.model import PolicySnapshot
from authz.policy.rules import EvalContext
from authz.ports import AuditSink, OwnershipStore, PolicySource, TokenVerifier
from authz.request import Decision, DockerRequest, IdentitySource, Mode, Operation, Phase, Subject

log = logging.getLogger(__name__)

_UNKNOWN = Subject(name=None, source=IdentitySource.ANONYMOUS)

# The plugin's own reads of the daemon come back through it with this header: image lookups
# (authz.image_inspect) and the listings `authzctl ownership prune` compares the table with.
INTERNAL_HEADER = "X-Authz-Internal"
INTERNAL_ACTIONS = frozenset({"image:inspect", "container:list", "container:inspect", "network:list", "volume:list",
                              "volume:inspect"})  # fmt: skip
PROBE_ACTION = "system:version"  # what authz.daemon_api asks with the internal token, to be refused

# AuthZRes of these actions change the ownership table: kind, how to read the new object.
_CREATES = {"container:create": "container", "network:create": "network", "volume:create": "volume",
            "container:exec": "exec"}  # fmt: skip
_DELETES = {"container:delete": "container", "network:delete": "network", "volume:delete": "volume"}
# What a prune's 200 reply lists as removed: container IDs, network and volume names (moby's
# ContainersPrune, NetworksPrune, VolumesPrune reports).
_PRUNES = {"container:prune": ("container", "ContainersDeleted"), "network:prune": ("network", "NetworksDeleted"),
           "volume:prune": ("volume", "VolumesDeleted")}  # fmt: skip


def _ownership_failure(ownership: OwnershipStore | None) -> str | None:
    """Why an ownership lookup of this thread answered "unknown" (``DeadlineOwnership``), or None."""
    take = getattr(ownership, "take_failure", None)  # optional: plain stores never time out
    return take() if take is not None else None


def _explain_ownership_failure(decision: Decision, failure: str | None) -> Decision:
    """A deny that may stem from an unreadable ownership store says so (the owner was unknown)."""
    if failure is None or decision.allow:
        return decision
    note = f" (owner unknown because {failure}; roles limited to their own objects are refused until it answers)"
    return replace(decision, message=decision.message + note, reason=decision.reason + note)


# A volume create's answer that is older than this names a volume that existed before the call.
# (Its CreatedAt has whole seconds; the daemon and the plugin share the host's clock.)
VOLUME_FRESH_SECONDS = 10.0


def _timestamp(value: object) -> float | None:
    """Epoch seconds of an RFC 3339 time as the daemon writes it, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _answered_object(kind: str, body: bytes) -> str:
    """The object an inspect answer names: its full ID (a volume's is its name); a predefined
    network by its name, as requests name it (they belong to nobody)."""
    # An answer is 1-40 KB: orjson takes a fifth of json's time, on every inspect (protocol.py on its limits).
    try:
        answer = orjson.loads(body) if len(body) <= 1 << 20 else json.loads(body)
    except (ValueError, RecursionError) as exc:  # orjson's JSONDecodeError is a ValueError
        raise RequestError(f"the {kind} inspect answer is not JSON: {exc}") from None
    if not isinstance(answer, dict):
        raise RequestError(f"the {kind} inspect answer is not an object")
    if kind == "network" and answer.get("Name") in PREDEFINED_NETWORKS:
        return str(answer["Name"])
    named = answer.get({"volume": "Name", "exec": "ID"}.get(kind, "Id"))
    if not isinstance(named, str) or not named:
        raise RequestError(f"the {kind} inspect answer names no object")
    return named


def correlation_id(request: DockerRequest, body_digest: str | None = None) -> str:
    """Same value for the AuthZReq and the AuthZRes of one API call (the daemon gives no id).

    ``body_digest``: the sha256 hex of ``request.body`` when classification already computed it.
    """
    token = request.header(TOKEN_HEADER) or ""
    if body_digest is not None and request.body:
        digest = body_digest
    else:
        digest = hashlib.sha256(request.body).hexdigest() if request.body else ""
    text = "\n".join((request.method, request.uri, request.user, token, digest))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Authorizer:
    """Composed once per worker by the server; every method is safe to call from many threads."""

    def __init__(
        self,
        policy: PolicySource,
        audit: AuditSink,
        verifier: TokenVerifier | None = None,
        ownership: OwnershipStore | None = None,
        clock: Callable[[], float] = time.time,
        node: str = "",
        image_user: Callable[[str], str | None] | None = None,
        volume_exists: Callable[[str], bool | None] | None = None,
        internal_token: str | None = None,
        host_root: str | None = "/",
        audit_level: str = "metadata",
        observer: Callable[[Decision, str, float], None] | None = None,
    ) -> None:
        """``audit_level``: ``metadata`` or ``request`` (request-phase events then carry ``detail``)."""
        self._policy = policy
        self._audit = audit
        self._verifier = verifier
        self._ownership = ownership
        self._clock = clock
        self._node = node
        self._request_level = audit_level == "request"
        self._compiled = CompiledCache()
        self._internal_token = internal_token
        self._context = EvalContext(ownership=ownership, image_user=image_user, volume_exists=volume_exists,
                                    host_root=host_root, defer_unknown_reads=True)  # fmt: skip
        self._answer_context = EvalContext(ownership=ownership, image_user=image_user)  # judges RESPONSE_JUDGED_READS
        self._observer = observer  # metrics: (decision, action, seconds) after every AuthZReq decision

    def prepare(self, snapshot: PolicySnapshot) -> None:
        """Build what deciding with ``snapshot`` needs (the compiled roles, the directory index) ahead
        of the requests that will use it: the policy poller calls this before serving it. Built on
        first use instead, the first request after a change waited 15 ms + 5 ms (100 roles, 1,000
        users) to 90 ms + 35-70 ms (500 roles, 10,000 users)."""
        self._compiled.get(snapshot)
        DirectoryIndex.for_snapshot(snapshot)

    # ------------------------------------------------------------------ AuthZReq

    def authorize(self, request: DockerRequest) -> Decision:
        now = self._clock()
        operation: Operation | None = None
        subject: Subject = _UNKNOWN
        source = "unknown"
        try:
            operation = classify(request)
            internal = request.header(INTERNAL_HEADER)
            if internal is not None:
                # Before identify: the plugin's own lookup has no user identity, only this token.
                decision = self._internal_decision(operation, internal)
                return self._record(request, operation, subject, "internal", decision, now)
            try:
                subject, snapshot = self._identify(request, now, self._policy.current)
                source = subject.source.value
            except IdentityError as exc:
                if operation.action == PING:  # the CLI pings before anything; a bad token must not break it
                    decision = Decision(True, "", reason=f"ping allowed despite identity error: {exc}",
                                        rule="builtin:ping")  # fmt: skip
                else:
                    reason = f"identity rejected: {exc}"
                    decision = Decision(False, f"authz: denied {operation.action}: {reason}", reason=reason,
                                        rule="identity")  # fmt: skip
            else:
                _ownership_failure(self._ownership)  # forget a failure left by an earlier request
                decision = evaluate(self._compiled.get(snapshot), subject, operation, self._context)
                decision = _explain_ownership_failure(decision, _ownership_failure(self._ownership))
        except RequestError as exc:
            # Fail closed: what we cannot read exactly as the daemon would, we do not allow.
            action = operation.action if operation else "unknown"
            shown = request.uri if len(request.uri) <= 200 else request.uri[:200] + "…"  # a 1 MB URI stays out
            message = f"authz: denied {request.method} {shown}: {str(exc)[:500]}"
            decision = Decision(False, message, reason=str(exc)[:2000], rule="classify")
            log.info("denied unclassifiable %s request: %s", action, exc)
        except StoreError as exc:
            decision = Decision(False, f"authz: denied: policy store unavailable ({exc})", reason=str(exc),
                                rule="store", error=f"policy store unavailable: {exc}")  # fmt: skip
        except Exception as exc:
            log.exception("internal error while deciding")
            decision = Decision(False, f"authz: denied: internal error in the authorization plugin ({exc!r})",
                                reason=f"internal error: {exc!r}", rule="internal", error=repr(exc))  # fmt: skip
        return self._record(request, operation, subject, source, decision, now)

    def _identify(
        self, request: DockerRequest, now: float, snapshot_for: Callable[[int], PolicySnapshot]
    ) -> tuple[Subject, PolicySnapshot]:
        """Who is asking, and the snapshot that says so (``snapshot_for``: the source's ``current``
        or ``last_known``); ``IdentityError`` as ``identify``.

        The token is verified first: one issued at a revision this process has not read yet names
        a user (or roles) created just before it, and the source then reads the store rather than
        deny until its next poll.
        """
        claims = token_claims(request, self._verifier, now)
        snapshot = snapshot_for(claims.policy_revision if claims is not None else 0)
        return identify(request, snapshot, self._verifier, now, claims=claims), snapshot

    def _internal_decision(self, operation: Operation, presented: str) -> Decision:
        """Allow the read-only ``INTERNAL_ACTIONS`` for the configured internal token; deny all else.

        A request naming the header is never judged as a normal one: a wrong or unconfigured
        token, or any other action, is denied (the header is ours; nobody else sends it).
        """
        expected = self._internal_token
        valid = expected is not None and hmac.compare_digest(presented.encode(), expected.encode())
        if valid and operation.action in INTERNAL_ACTIONS:
            return Decision(True, "", reason="the plugin's own read of the daemon (internal token)",
                            rule="builtin:internal")  # fmt: skip
        allowed = ", ".join(sorted(INTERNAL_ACTIONS))
        reason = f"{INTERNAL_HEADER} allows only {allowed}" if valid else f"invalid {INTERNAL_HEADER} header"
        if valid and operation.action == PROBE_ACTION:
            # Its refusal proves the daemon consults this plugin: say so to whoever reads the audit log.
            reason += " (the plugin's own probe that the daemon consults it, denied on purpose: ownership prune)"
        return Decision(False, f"authz: denied {operation.action}: {reason}", reason=reason, rule="builtin:internal")

    def record_unreadable(self, reason: str) -> Decision:
        """A plugin call we could not even decode (e.g. the empty-body retry): deny and audit it."""
        decision = Decision(False, f"authz: denied: {reason}", reason=reason, rule="protocol")
        placeholder = DockerRequest(method="", uri="")
        return self._record(placeholder, None, _UNKNOWN, "unknown", decision, self._clock())

    def _record(self, request: DockerRequest, operation: Operation | None, subject: Subject, source: str,
                decision: Decision, now: float) -> Decision:  # fmt: skip
        """Audit the decision, then show the final one to the observer (every AuthZReq, and the
        AuthZRes denials of the reads judged on their answer)."""
        final = self._write_record(request, operation, subject, source, decision, now)
        if self._observer is not None and (request.phase is Phase.REQUEST or not final.allow):
            try:
                self._observer(final, operation.action if operation else "unknown", self._clock() - now)
            except Exception:  # metrics must never change or block an answer: log and go on
                log.exception("decision observer failed")
        return final

    def _write_record(self, request: DockerRequest, operation: Operation | None, subject: Subject, source: str,
                      decision: Decision, now: float) -> Decision:  # fmt: skip
        event = AuditEvent(
            time=now,
            request_id=correlation_id(request, operation.body_digest if operation else None),
            node=self._node,
            phase=request.phase.value,
            user=subject.name if subject is not _UNKNOWN else (request.user or None),
            source=source,
            roles=subject.roles,
            action=operation.action if operation else "unknown",
            method=request.method,
            uri=redact_uri(request.uri),
            object=operation.target if operation else None,
            allow=decision.allow,
            mode=decision.mode.value,
            rule=decision.rule,
            role=decision.role,
            reason=decision.reason,
            message=decision.message,
            warnings=decision.warnings,
            error=decision.error,
            body_digest=operation.body_digest if operation else None,
            token_id=subject.token_id,
            status_code=request.status_code,
            detail=self._detail(request, operation),
        )
        try:
            self._audit.write(event)
        except Exception as exc:
            log.exception("audit write failed")
            if decision.allow and request.phase is Phase.RESPONSE:
                # The call already ran (its AuthZReq was recorded); a deny now would only tell the
                # client it failed while the container/network/volume exists. Keep the allow.
                return replace(decision, error=f"audit write failed: {exc!r}")
            if decision.allow:
                return Decision(False, denial_message(subject, event.action, "the audit log cannot be written; "
                                "nothing is allowed unrecorded"), reason="audit unavailable", rule="audit",
                                error=f"audit write failed: {exc!r}")  # fmt: skip
            # Still a deny; say it went unrecorded (the daemon shows Msg, never Err).
            return replace(decision, message=f"{decision.message} (not recorded: the audit log cannot be written)",
                           error=decision.error or f"audit write failed: {exc!r}")  # fmt: skip
        return decision

    def _detail(self, request: DockerRequest, operation: Operation | None) -> dict[str, Any]:
        if not self._request_level or operation is None or request.phase is not Phase.REQUEST:
            return {}
        try:
            return request_detail(operation)
        except Exception as exc:  # a summary must never change the decision; say it is missing
            log.exception("audit detail failed")
            return {"detail_error": repr(exc)}

    # ------------------------------------------------------------------ AuthZRes

    def records_response(self, method: str, uri: str) -> bool:
        """Whether the AuthZRes of this call changes the ownership table or is judged (a read of
        ``RESPONSE_JUDGED_READS``); else it is just allowed."""
        try:
            action = route_action(method, uri)
        except AuthzError:
            return False  # the AuthZReq of an unclassifiable call was denied: nothing ran
        return (action in _CREATES or action in _DELETES or action in _PRUNES or action == "container:rename"
                or action in RESPONSE_JUDGED_READS)  # fmt: skip

    def observe_response(self, request: DockerRequest) -> Decision:
        """Decisions are made at AuthZReq; here we keep the ownership table right, and judge the
        answers of the reads the AuthZReq left to them (``RESPONSE_JUDGED_READS``)."""
        now = self._clock()
        try:
            operation = classify(request, views=False)  # judged at AuthZReq: no typed view needed
        except AuthzError:
            return Decision(True, "", reason="response of an unclassified request (already denied)")
        if operation.action in RESPONSE_JUDGED_READS:
            return self._judge_answer(request, operation, now)
        kind = _CREATES.get(operation.action) or _DELETES.get(operation.action)
        if kind is None and operation.action not in _PRUNES and operation.action != "container:rename":
            return Decision(True, "", reason="response phase: nothing to record")
        status = request.status_code or 0
        if not 200 <= status < 300 or self._ownership is None:
            return Decision(True, "", reason=f"response phase: status {status}, nothing recorded")
        subject = _UNKNOWN
        try:
            # The call already ran: its creator is identified even while the store is down and
            # AUTHZ_ON_STORE_ERROR=deny refuses new decisions (the change waits in the queue).
            subject, snapshot = self._identify(request, now, self._policy.last_known)
            if operation.action == "volume:create" and subject.name is not None:
                judged = self._judge_volume_again(request, subject, snapshot, now)
                if judged is not None:
                    return self._record(request, operation, subject, subject.source.value, judged, now)
            note = self._update_ownership(operation, request, subject)
        except StoreError as exc:  # a slow store: the change is queued (DeadlineOwnership), no traceback
            log.warning("ownership update not confirmed: %s", exc)
            note = f"ownership update failed: {exc!r}"
        except Exception as exc:
            log.exception("ownership update failed")
            note = f"ownership update failed: {exc!r}"
        decision = Decision(True, "", reason=note, rule="response", mode=Mode.ENFORCE)
        return self._record(request, operation, subject, subject.source.value, decision, now)

    def _judge_answer(self, request: DockerRequest, operation: Operation, now: float) -> Decision:
        """Judge a read's answer by the object it names, as if the request had named it by full ID.

        Only answers the daemon holds (2xx with a body) are judged: for a failed call the daemon
        ignores the verdict. A denial here is recorded; an allow is not (the AuthZReq was).
        Anything unexpected denies: the answer is withheld, nothing has changed.
        """
        status = request.status_code or 0
        if not 200 <= status < 300 or not request.response_body:
            return Decision(True, "", reason=f"response phase: status {status}, nothing to judge")
        subject, source = _UNKNOWN, "unknown"
        try:
            internal = request.header(INTERNAL_HEADER)
            if internal is not None:
                decision = self._internal_decision(operation, internal)
                if decision.allow:
                    return decision
                return self._record(request, operation, subject, "internal", decision, now)
            named = _answered_object(operation.target_kind or "", request.response_body)
            subject, snapshot = self._identify(request, now, self._policy.last_known)
            source = subject.source.value
            _ownership_failure(self._ownership)
            judged = replace(operation, target=named)
            decision = evaluate(self._compiled.get(snapshot), subject, judged, self._answer_context)
            decision = _explain_ownership_failure(decision, _ownership_failure(self._ownership))
            if decision.allow:
                return decision
            note = f" (asked for as {operation.target!r}; judged on the daemon's answer)"
            decision = replace(decision, message=decision.message + note, reason=decision.reason + note)
        except IdentityError as exc:  # as at AuthZReq: a refused identity is a denial, not a fault
            reason = f"identity rejected: {exc}"
            decision = Decision(False, f"authz: denied {operation.action}: {reason}", reason=reason, rule="identity")
        except Exception as exc:  # StoreError, an answer we cannot read (RequestError): withhold it
            reason = f"the answer to {operation.action} could not be judged: {exc}"
            decision = Decision(False, f"authz: denied {operation.action}: {reason}", reason=reason,
                                rule="response", error=repr(exc))  # fmt: skip
        return self._record(request, operation, subject, source, decision, now)

    def _judge_volume_again(self, request: DockerRequest, subject: Subject, snapshot: PolicySnapshot,
                            now: float) -> Decision | None:  # fmt: skip
        """None for a volume this call made (record its owner as usual); else the verdict on
        "creating" one that existed: the daemon answers 201 with it, unchanged.

        Recording the caller then would hand them a volume made before the plugin (a database's
        data) or another user's. The create is judged again, the volume rules told by the answer
        that the volume exists (``existing_volume_violation``, the check the AuthZReq makes when
        it may ask the daemon): its owner and roles with ``ownership: any`` are answered, nothing
        is recorded. An answer without a readable ``CreatedAt`` counts as an old volume.
        """
        answer = orjson.loads(request.response_body or b"{}")
        name = answer.get("Name") if isinstance(answer, dict) else None
        created = answer.get("CreatedAt") if isinstance(answer, dict) else None
        if not isinstance(name, str) or not name:
            return None  # _update_ownership says "no id" and records nothing
        made = _timestamp(created)
        if made is not None and made >= now - VOLUME_FRESH_SECONDS:
            return None
        since = f"created {created}" if made is not None else "its answer gives no creation time"
        existed = EvalContext(ownership=self._ownership, volume_exists=lambda _name: True)
        decision = evaluate(self._compiled.get(snapshot), subject, classify(request), existed)
        decision = _explain_ownership_failure(decision, _ownership_failure(self._ownership))
        if decision.allow:
            reason = f"volume {name!r} already existed ({since}): nothing recorded; {decision.reason}"
            return replace(decision, reason=reason, rule="response")
        note = f" (judged on the daemon's answer: volume {name!r} already existed, {since})"
        return replace(decision, message=decision.message + note, reason=decision.reason + note)

    def _update_ownership(self, operation: Operation, request: DockerRequest, subject: Subject) -> str:
        if self._ownership is None:
            return "no ownership store"
        action = operation.action
        if action in _DELETES:
            self._ownership.forget(_DELETES[action], operation.target or "")
            return f"{_DELETES[action]} {operation.target} removed"
        if action in _PRUNES:
            return self._forget_pruned(*_PRUNES[action], request)
        if action == "container:rename":
            new_name = operation.param("name") or ""
            self._ownership.rename("container", operation.target or "", new_name)
            return f"container {operation.target} renamed to {new_name}"
        kind = _CREATES[action]
        if subject.name is None:
            return f"{kind} created by an anonymous caller: no owner recorded"
        response = json.loads(request.response_body or b"{}")
        if not isinstance(response, dict):
            return f"{kind} created but the response body is not an object: no owner recorded"
        if kind == "volume":
            object_id = name = response.get("Name") or ""
        else:
            object_id = response.get("Id") or ""
            name = operation.param("name") if kind == "container" else None
            if kind == "network":  # its name is only in the request body (not decoded at AuthZRes)
                body = gojson.loads(request.body) if request.body else None
                value = body.field("Name") if isinstance(body, gojson.GoObject) else None
                name = value if isinstance(value, str) else None
        if not object_id:
            return f"{kind} created but the response carried no id: no owner recorded"
        self._ownership.record(kind, object_id, name, subject.name)
        return f"{kind} {object_id[:12]} ({name or 'no name'}) owned by {subject.name}"

    def _forget_pruned(self, kind: str, field: str, request: DockerRequest) -> str:
        """Forget the objects a prune removed, as its reply lists them (``field``: null when none)."""
        if self._ownership is None:
            return "no ownership store"
        response = json.loads(request.response_body or b"{}")
        removed = response.get(field) if isinstance(response, dict) else None
        if removed is None:
            return f"{kind} prune removed nothing"
        if not isinstance(removed, list) or not all(isinstance(item, str) and item for item in removed):
            return f"{kind} prune reply has no list of strings in {field}: nothing forgotten"
        for done, reference in enumerate(removed):
            try:
                if kind == "network":  # the report names networks; an ID prefix must not match
                    self._ownership.forget_named(kind, reference)
                else:  # container IDs, volume names (a volume's ID is its name)
                    self._ownership.forget(kind, reference)
            except StoreError as exc:
                # Each further change would wait for the store again, holding up the daemon's
                # reply: the rest stay stale (harmless: refused by the daemon) for the sweep.
                return (f"{done} of {len(removed)} pruned {kind} record(s) forgotten, then the store failed "
                        f"({exc}); `authzctl ownership prune` forgets the rest")  # fmt: skip
        shown = ", ".join(item[:12] for item in removed[:20]) + (" …" if len(removed) > 20 else "")
        return f"{len(removed)} pruned {kind} record(s) forgotten: {shown}"
