"""Objects: who created which container, network, volume and exec instance (the ownership table).

Roles with ``ownership: own`` are judged by it. Read-only here: records come and go with the
daemon's creates, deletes and prunes, and ``authzctl ownership prune`` forgets what the daemon
removed on its own. The page needs ``users:read``, like the users it names (auditors see who did
what in the audit log instead).
"""

from __future__ import annotations

from flask import Blueprint, render_template, request

from admin.permissions import UiPermission, requires
from admin.services import services
from authz.ownership_sweep import RECORDED_KINDS as KINDS

bp = Blueprint("objects", __name__, url_prefix="/objects")

PAGE_SIZE = 500  # the newest this many; a filter narrows the rest down


@bp.get("")
@requires(UiPermission.USERS_READ)
def index() -> str:
    kind = request.args.get("kind", "").strip()
    owner = request.args.get("owner", "").strip()
    kind_filter = kind if kind in KINDS else None
    records = services().ownership.list(kind=kind_filter, owner=owner or None, limit=PAGE_SIZE + 1)
    return render_template(
        "objects/list.html",
        records=records[:PAGE_SIZE],
        more=len(records) > PAGE_SIZE,
        page_size=PAGE_SIZE,
        kinds=KINDS,
        kind=kind_filter or "",
        owner=owner,
        users=sorted(user.name for user in services().policy.list_users()),
    )
