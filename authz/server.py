"""The Flask app that answers the daemon on the plugin socket (an edge: Flask lives here only).

Three endpoints: ``/Plugin.Activate``, ``/AuthZPlugin.AuthZReq``, ``/AuthZPlugin.AuthZRes``, plus
``/healthz`` for operators. dockerd sends no Content-Type, so bodies are read raw. Whatever
happens, the daemon gets HTTP 200 and a JSON boolean ``Allow``; errors are denials (AuthZReq) or
recorded allows (AuthZRes, whose verdict cannot undo what already ran).

The three protocol endpoints are served by a thin WSGI fast path in front of Flask's routing:
dockerd calls them twice per API call, and Flask's request machinery costs as much as a decision.
Everything else (``/healthz``, 404s) goes through Flask as usual.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response

from authz.decide import Authorizer
from authz.errors import RequestError
from authz.protocol import ACTIVATE_REPLY, call_of, decode_document, parse_request, reply, request_from_document
from authz.request import Decision, Phase

log = logging.getLogger(__name__)

# AuthZRes can carry multi-megabyte response bodies (a 3 MB `docker ps`), AuthZReq at most 4 MiB.
MAX_PLUGIN_REQUEST = 64 * 1024 * 1024
_JSON_HEADERS = [("Content-Type", "application/json")]

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


_ALLOW = _json({"Allow": True})  # most answers: encoded once


def _answer(decision: Decision) -> bytes:
    return _ALLOW if decision.allow and not decision.error else _json(reply(decision))


class PluginHandlers:
    """The protocol: raw request body in, reply body out. Never raises."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    def activate(self, _raw: bytes) -> bytes:
        return _json(ACTIVATE_REPLY)

    def request(self, raw: bytes) -> bytes:
        try:
            decision = self.authorizer.authorize(parse_request(raw, Phase.REQUEST))
        except RequestError as exc:
            # Unreadable plugin call: deny (and record it) rather than guess what it was.
            decision = self.authorizer.record_unreadable(str(exc))
        except Exception as exc:  # never a 5xx, never an allow on a bug
            log.exception("AuthZReq failed")
            decision = Decision(False, f"authz: denied: internal error ({exc!r})", error=repr(exc))
        return _answer(decision)

    def response(self, raw: bytes) -> bytes:
        try:
            doc = decode_document(raw)  # once: the recording responses are read from the same object
            method, uri = call_of(doc)
            if not self.authorizer.records_response(method, uri):
                # Fast path: most responses need nothing but an allow (decisions were made at AuthZReq).
                return _ALLOW
            decision = self.authorizer.observe_response(request_from_document(doc, Phase.RESPONSE))
        except Exception as exc:  # the call already ran; a deny here cannot undo it
            log.warning("AuthZRes not recorded: %r", exc)
            decision = Decision(True, "", error=repr(exc))
        return _answer(decision)


def _read_body(environ: dict[str, Any]) -> bytes | None:
    """The request body, or None when it is larger than we accept."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        size = int(length)
        return None if size > MAX_PLUGIN_REQUEST else stream.read(size)
    data = stream.read(MAX_PLUGIN_REQUEST + 1)  # chunked: read up to the limit
    return None if len(data) > MAX_PLUGIN_REQUEST else data


ProtocolRoutes = dict[str, Callable[[bytes], bytes]]


def protocol_routes(handlers: PluginHandlers) -> ProtocolRoutes:
    """Path → handler for the three endpoints dockerd posts to."""
    return {
        "/Plugin.Activate": handlers.activate,
        "/AuthZPlugin.AuthZReq": handlers.request,
        "/AuthZPlugin.AuthZRes": handlers.response,
    }


def answer_oversized() -> bytes:
    return _json({"Allow": False, "Msg": "authz: denied: plugin request too large", "Err": "too large"})


def fast_path(handlers: PluginHandlers, fallback: WsgiApp) -> WsgiApp:
    routes = protocol_routes(handlers)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        handler = routes.get(environ.get("PATH_INFO", ""))
        if handler is None or environ.get("REQUEST_METHOD") != "POST":
            return fallback(environ, start_response)
        try:
            raw = _read_body(environ)
            payload = answer_oversized() if raw is None else handler(raw)
        except Exception as exc:  # malformed HTTP must still get a JSON deny, not a 500
            log.warning("plugin request failed before decision: %r", exc)
            message = f"authz: denied: malformed plugin request ({exc})"
            payload = _json({"Allow": False, "Msg": message, "Err": str(exc)})
        start_response("200 OK", [*_JSON_HEADERS, ("Content-Length", str(len(payload)))])
        return [payload]

    return app


def create_app(authorizer: Authorizer, health: Callable[[], dict[str, Any]] | None = None) -> Flask:
    """App factory; ``authorizer`` is composed by ``authz.composition``."""
    app = Flask("authz.server")
    app.config["MAX_CONTENT_LENGTH"] = MAX_PLUGIN_REQUEST
    handlers = PluginHandlers(authorizer)

    @app.get("/healthz")
    def healthz() -> Response:
        status = health() if health is not None else {"ok": True}
        return Response(json.dumps(status), status=200 if status.get("ok") else 503, mimetype="application/json")

    @app.errorhandler(Exception)
    def on_error(exc: Exception) -> Response:
        log.warning("request failed: %r", exc)
        body = {"Allow": False, "Msg": f"authz: denied: malformed plugin request ({exc})", "Err": str(exc)}
        return Response(json.dumps(body), status=200, mimetype="application/json")

    app.wsgi_app = fast_path(handlers, app.wsgi_app)  # type: ignore[method-assign,assignment]
    # authz.worker answers dockerd's well-formed posts from these without building a WSGI request.
    app.extensions["authz.protocol_routes"] = protocol_routes(handlers)
    return app
