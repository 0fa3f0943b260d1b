"""``authzctl serve``: gunicorn on the plugin's unix socket (an edge).

Threaded workers (gthread): dockerd keeps several keep-alive connections open and waits without a
timeout, so a worker must never be stuck on one idle connection. The socket is created with umask
0177 (mode 0600, root only): whoever can talk to it can impersonate the daemon's questions.
Each worker composes its own Authorizer after the fork (database connections must not be shared).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from authz.config import Config

log = logging.getLogger(__name__)


class PluginApplication(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    def __init__(self, options: dict[str, Any], config: Config) -> None:
        self._options = options
        self._authz_config = config
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from authz.composition import build_plugin_app  # noqa: PLC0415 - built per worker, after fork

        return build_plugin_app(self._authz_config)


def gunicorn_options(socket_path: str, workers: int, threads: int = 4) -> dict[str, Any]:
    return {
        "bind": [f"unix:{socket_path}"],
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "umask": 0o177,  # the socket becomes 0600
        "keepalive": 75,  # dockerd reuses connections; do not close them under it
        "timeout": 30,
        "graceful_timeout": 10,
        "preload_app": False,
        "control_socket_disable": True,  # gunicorn >= 25 opens a control socket by default
        "accesslog": None,
        "errorlog": "-",
        "loglevel": os.environ.get("AUTHZ_LOG_LEVEL", "info"),
        "proc_name": "authz-plugin",
    }


def run(socket_path: str, workers: int, config: Config, threads: int = 4) -> None:
    """Serve until stopped. Removes a stale socket file first (a crashed previous run)."""
    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()
    PluginApplication(gunicorn_options(socket_path, workers, threads), config).run()
