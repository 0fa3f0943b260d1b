"""The simulator page: pick a user, give a docker command line or a raw API request, see the verdict.

It calls the real classifier and engine (``admin.simulation``) with the current policy snapshot
and the ownership table read-only; nothing reaches the daemon and nothing is audited. A POST only
because a raw request body may be larger than a URL can carry; it changes nothing.
"""

from __future__ import annotations

from flask import Blueprint, render_template, request

from admin.apicalls import ApiCall
from admin.cliflags import CommandError
from admin.dockercli import translate
from admin.permissions import UiPermission, requires
from admin.services import services
from admin.simulation import simulate
from authz.storage.source import StorePolicySource

bp = Blueprint("simulator", __name__, url_prefix="/simulate")

METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD")
EXAMPLES = (
    "docker run --rm busybox true",
    "docker run -d --name web -p 8080:80 --memory 256m nginx",
    "docker run --rm --privileged -v /:/host busybox sh",
    "docker exec -u root web id",
    "docker pull alpine:3.20",
    "docker volume create --opt type=none --opt o=bind --opt device=/ hostroot",
)
ANONYMOUS = "(anonymous)"


def _raw_call() -> ApiCall:
    method = request.form.get("method", "GET").upper()
    if method not in METHODS:
        raise CommandError(f"method must be one of {', '.join(METHODS)}")
    path = request.form.get("path", "").strip()
    if not path.startswith("/"):
        raise CommandError("the path must start with / (e.g. /containers/create?name=web)")
    body = request.form.get("body", "")
    # The body goes to the classifier exactly as typed: it judges the JSON as the daemon would.
    return ApiCall(method, path, body.encode() if body.strip() else None, what=f"{method} {path}")


@bp.route("", methods=["GET", "POST"])
@requires(UiPermission.SIMULATOR_RUN)
def index() -> tuple[str, int]:
    svc = services()
    users = list(svc.policy.load_policy().users)
    form = {
        "user": request.form.get("user", users[0] if users else ANONYMOUS),
        "mode": request.form.get("mode", "cli"),
        "command": request.form.get("command", EXAMPLES[0]),
        "method": request.form.get("method", "POST"),
        "path": request.form.get("path", "/containers/create"),
        "body": request.form.get("body", ""),
        "version": request.form.get("version", svc.settings.api_version),
    }
    result, error = None, None
    if request.method == "POST":
        try:
            calls = [_raw_call()] if form["mode"] == "api" else translate(form["command"])
            user = None if form["user"] == ANONYMOUS else form["user"]
            version = form["version"].strip()
            if version and not version.replace(".", "").isdigit():
                raise CommandError("API version: digits and dots, e.g. 1.41 (empty: no version prefix)")
            snapshot = StorePolicySource(svc.db, poll=0).current()
            result = simulate(snapshot, svc.ownership, user, calls, api_version=version)
        except CommandError as exc:
            error = str(exc)
    status = 400 if error else 200
    page = render_template("simulator/index.html", form=form, users=users, anonymous=ANONYMOUS, methods=METHODS,
                           examples=EXAMPLES, result=result, error=error)  # fmt: skip
    return page, status
