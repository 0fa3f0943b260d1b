"""``/metrics``: the plugin workers' Prometheus metrics, merged from ``<state_dir>/metrics``.

No UI session is needed (scrapers have none); instead the client address must fall in
``AUTHZ_METRICS_ALLOW`` (default loopback only). The address is the socket peer unless
``AUTHZ_ADMIN_TRUST_PROXY`` is set, in which case the trusted proxy's ``X-Forwarded-For`` counts.
``/healthz`` says whether the admin listener can reach the store.
"""

from __future__ import annotations

import ipaddress
import json

from flask import Blueprint, Response, abort

from admin.permissions import public
from admin.security import client_address
from admin.services import services
from authz.metrics import CONTENT_TYPE_LATEST, collect
from authz.storage.revision import read_revision

bp = Blueprint("metrics", __name__)


def allowed(address: str) -> bool:
    """Whether ``address`` may read the metrics; an unparsable address may not (fail closed)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 on a dual-stack socket is 127.0.0.1
    return any(ip in network for network in services().settings.metrics_allow)


@bp.get("/metrics")
@public  # scrapers have no session: the address allow-list guards this route instead
def metrics() -> Response:
    if not allowed(client_address()):
        abort(403, "this address may not read /metrics (see AUTHZ_METRICS_ALLOW)")
    return Response(collect(services().settings.metrics_dir), content_type=CONTENT_TYPE_LATEST)


@bp.get("/healthz")
@public  # says only whether the store answers, nothing about its content
def healthz() -> Response:
    try:
        with services().db.session() as session:
            read_revision(session)
    except Exception:
        # No detail: this route needs no sign-in, and database errors can name paths and hosts.
        body = {"ok": False, "db_reachable": False}
        return Response(json.dumps(body), status=503, mimetype="application/json")
    return Response(json.dumps({"ok": True, "db_reachable": True}), mimetype="application/json")
