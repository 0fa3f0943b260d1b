"""The real plugin composed in this process (``authz.composition``) over a real store, for fault tests.

``InProcessPlugin.create(url, state_dir, ...)`` migrates the store, applies ``POLICY``, makes token
keys and one token per user, then composes exactly what a gunicorn worker composes (policy
poller, deadline-bounded ownership, audit journal and shipper, the WSGI fast path) and talks to
it with the daemon's wire format. Every call is counted by its audit correlation id, so a test can
compare what was decided with what reached the audit table.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from authz.audit_journal import JournalAuditSink
from authz.audit_shipper import JournalShipper
from authz.composition import build_audit_journal, build_authorizer, build_policy_source
from authz.config import Config
from authz.decide import correlation_id
from authz.identity.token import KeyStore, issue_token
from authz.policy.schema import parse_policy
from authz.protocol import parse_request
from authz.request import Phase
from authz.server import create_app
from authz.storage import Database, migrate
from authz.storage.directory import PolicyStore
from authz.storage.source import StorePolicySource, recycle_on_corruption
from authz.storage.yamlio import load_mapping

POLICY = """\
version: 1
settings: {anonymous_role: null, default_mode: enforce}
users:
  admin: {roles: [admin]}
  dev: {roles: [developer]}
  viewer: {roles: [viewer]}
"""
API = "/v1.47"


@dataclass
class Answer:
    allow: bool
    message: str
    seconds: float
    started: float = 0.0  # time.monotonic() when the request was sent


@dataclass
class InProcessPlugin:
    config: Config
    db: Database
    client: FlaskClient
    sink: JournalAuditSink
    shipper: JournalShipper
    source: StorePolicySource
    tokens: dict[str, str]
    sent: Counter[str] = field(default_factory=Counter)  # audit request id -> decisions made
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, url: str, state_dir: Path, *, prepare: bool = True, **settings: Any) -> InProcessPlugin:
        """``settings``: ``Config`` fields (``on_store_error``, ``decision_deadline``, ``revision_poll`` …)."""
        config = Config(database_url=url, state_dir=state_dir, node=settings.pop("node", "inproc"))
        config = replace(config, **{"revision_poll": 0.2, **settings})
        if prepare:
            migrate(url)
            store = PolicyStore(Database(url))
            store.store_builtin_roles()
            store.apply_policy(parse_policy(load_mapping(POLICY)), "test")
        keys = KeyStore(config.keys_dir).load_or_create()
        now = time.time()
        tokens = {user: issue_token(keys, user, 3600, now).token for user in ("admin", "dev", "viewer")}
        db = recycle_on_corruption(Database(url))  # as build_plugin_app does
        sink, shipper = build_audit_journal(config, db)
        source = build_policy_source(config)
        authorizer = build_authorizer(config, db, environ={}, audit=sink, source=source)
        app = create_app(authorizer)
        return cls(config, db, app.test_client(), sink, shipper, source, tokens)

    def close(self) -> None:
        self.source.stop()
        self.shipper.stop()
        self.sink.close()
        self.db.dispose()

    # ------------------------------------------------------------ the daemon's side

    def wire(self, user: str | None, method: str, path: str, body: Any = None,
             response: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """The daemon's JSON; ``response`` {status, body} makes it an AuthZRes."""
        headers = {"X-Authz-Token": self.tokens[user]} if user else {}
        doc: dict[str, Any] = {"User": "", "UserAuthNMethod": "", "RequestMethod": method,
                               "RequestUri": API + path, "RequestHeaders": headers}  # fmt: skip
        if body is not None:
            doc["RequestBody"] = base64.b64encode(json.dumps(body).encode()).decode()
            doc["RequestHeaders"] = {**headers, "Content-Type": "application/json"}
        if response is not None:
            doc["ResponseStatusCode"] = response.get("status", 201)
            doc["ResponseBody"] = base64.b64encode(json.dumps(response.get("body", {})).encode()).decode()
            doc["ResponseHeaders"] = {"Content-Type": "application/json"}
        return doc

    def _post(self, endpoint: str, doc: dict[str, Any], phase: Phase) -> Answer:
        raw = json.dumps(doc).encode()
        started = time.monotonic()
        reply = self.client.post(endpoint, data=raw)
        seconds = time.monotonic() - started
        body = reply.get_json(force=True)
        assert reply.status_code == 200, reply.data
        if phase is Phase.REQUEST or _response_audited(doc):
            request_id = correlation_id(parse_request(raw, phase))
            with self._lock:
                self.sent[f"{phase.value}:{request_id}"] += 1
        return Answer(bool(body.get("Allow")), str(body.get("Msg", "")), seconds, started)

    def ask(self, user: str | None, method: str, path: str, body: Any = None) -> Answer:
        """One AuthZReq as the daemon sends it; the decision and how long it took."""
        return self._post("/AuthZPlugin.AuthZReq", self.wire(user, method, path, body), Phase.REQUEST)

    def respond(self, user: str | None, method: str, path: str, body: Any, result: dict[str, Any]) -> Answer:
        """The AuthZRes of a call that succeeded with ``result`` (records ownership of creates)."""
        doc = self.wire(user, method, path, body, {"status": 201, "body": result})
        return self._post("/AuthZPlugin.AuthZRes", doc, Phase.RESPONSE)

    def create_container(self, user: str, name: str, object_id: str) -> Answer:
        """AuthZReq then (if allowed) AuthZRes of ``docker create --name NAME`` as a developer may."""
        body = {"Image": "tiny", "User": "1000", "HostConfig": {"NetworkMode": "none"}}
        answer = self.ask(user, "POST", f"/containers/create?name={name}", body)
        if answer.allow:
            self.respond(user, "POST", f"/containers/create?name={name}", body, {"Id": object_id})
        return answer


def _response_audited(doc: dict[str, Any]) -> bool:
    """AuthZRes of creates, deletes and renames are recorded; every other one is a bare allow."""
    method, uri = doc["RequestMethod"], doc["RequestUri"]
    return (method == "POST" and "/create" in uri) or method == "DELETE"
