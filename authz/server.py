"""The Flask app that answers the daemon on the plugin socket (an edge: Flask lives here only).

Three endpoints: ``/Plugin.Activate``, ``/AuthZPlugin.AuthZReq``, ``/AuthZPlugin.AuthZRes``, plus
``/healthz`` for operators. dockerd sends no Content-Type, so bodies are read raw. Whatever
happens, the daemon gets HTTP 200 and a JSON boolean ``Allow``; errors are denials (AuthZReq) or
recorded allows (AuthZRes, whose verdict cannot undo what already ran).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, request

from authz.decide import Authorizer
from authz.errors import RequestError
from authz.protocol import ACTIVATE_REPLY, parse_request, reply
from authz.request import Decision, Phase

log = logging.getLogger(__name__)

# AuthZRes can carry multi-megabyte response bodies (a 3 MB `docker ps`), AuthZReq at most 4 MiB.
MAX_PLUGIN_REQUEST = 64 * 1024 * 1024


def _json(payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload), status=200, mimetype="application/json")


def create_app(authorizer: Authorizer, health: Any = None) -> Flask:
    """App factory; ``authorizer`` is composed by ``authz.composition``."""
    app = Flask("authz.server")
    app.config["MAX_CONTENT_LENGTH"] = MAX_PLUGIN_REQUEST

    @app.post("/Plugin.Activate")
    def activate() -> Response:
        return _json(ACTIVATE_REPLY)

    @app.post("/AuthZPlugin.AuthZReq")
    def authz_request() -> Response:
        try:
            decision = authorizer.authorize(parse_request(request.get_data(cache=False), Phase.REQUEST))
        except RequestError as exc:
            # Unreadable plugin call: deny (and record it) rather than guess what it was.
            decision = authorizer.record_unreadable(str(exc))
        except Exception as exc:
            log.exception("AuthZReq failed")
            decision = Decision(False, f"authz: denied: internal error ({exc!r})", error=repr(exc))
        return _json(reply(decision))

    @app.post("/AuthZPlugin.AuthZRes")
    def authz_response() -> Response:
        try:
            decision = authorizer.observe_response(parse_request(request.get_data(cache=False), Phase.RESPONSE))
        except Exception as exc:
            log.exception("AuthZRes failed")
            decision = Decision(True, "", error=repr(exc))
        return _json(reply(decision))

    @app.get("/healthz")
    def healthz() -> Response:
        status = health() if health is not None else {"ok": True}
        return Response(json.dumps(status), status=200 if status.get("ok") else 503, mimetype="application/json")

    @app.errorhandler(Exception)
    def on_error(exc: Exception) -> Response:
        # Includes 413 and malformed HTTP: the daemon must still get a JSON deny, not an HTML page.
        log.warning("plugin request failed before decision: %r", exc)
        return _json({"Allow": False, "Msg": f"authz: denied: malformed plugin request ({exc})", "Err": str(exc)})

    return app
