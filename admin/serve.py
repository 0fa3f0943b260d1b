"""gunicorn for the admin UI (``authzctl admin serve``): its own TCP listener, threaded workers.

Each worker builds its app after the fork (database connections are not shared). gunicorn's own
``X-Forwarded-*`` handling is off (``forwarded_allow_ips`` empty): proxy headers count only through
``AUTHZ_ADMIN_TRUST_PROXY`` (``admin.create_app`` adds ProxyFix then).
"""

from __future__ import annotations

import os
from typing import Any

from gunicorn.app.base import BaseApplication


class AdminApplication(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from admin import create_app  # noqa: PLC0415 - built per worker, after fork

        return create_app()


def gunicorn_options(
    bind: str, workers: int, certfile: str | None = None, keyfile: str | None = None, threads: int = 4
) -> dict[str, Any]:
    return {
        "bind": [bind],
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 60,  # a large export streams for a while; each batch is quick
        "graceful_timeout": 10,
        "preload_app": False,
        "control_socket_disable": True,  # gunicorn >= 25 opens a control socket by default
        "forwarded_allow_ips": "",  # never believe X-Forwarded-* here (see module docstring)
        "certfile": certfile,
        "keyfile": keyfile,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": os.environ.get("AUTHZ_LOG_LEVEL", "info"),
        "proc_name": "authz-admin",
    }


def run(bind: str, workers: int, certfile: str | None = None, keyfile: str | None = None) -> None:
    """Serve until stopped."""
    AdminApplication(gunicorn_options(bind, workers, certfile, keyfile)).run()
