"""A gunicorn worker made for dockerd: one thread per keep-alive connection.

dockerd keeps a few persistent connections to its plugin and sends every AuthZReq/AuthZRes over
them. gunicorn's ``gthread`` worker hands each request from its poller thread to a pool thread and
back, and ``sync`` closes the connection after every request; both pay for it on every call. Here
a connection's thread reads its requests in a loop, exactly like the daemon's own HTTP client
expects, and the main thread only accepts connections and keeps the arbiter's heartbeat.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
from typing import Any

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.workers import base

_QUIET_ERRORS = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF)


class ConnectionThreadWorker(base.Worker):  # type: ignore[misc]  # gunicorn ships no type hints
    """``worker_class = "authz.worker.ConnectionThreadWorker"``; ``worker_connections`` caps threads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._active = 0
        self._lock = threading.Lock()

    def run(self) -> None:
        for listener in self.sockets:
            listener.setblocking(False)
        limit = max(1, int(self.cfg.worker_connections))
        while self.alive:
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
            try:
                ready, _, _ = select.select(self.sockets, [], [], 1.0)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EBADF):
                    continue
                raise
            for listener in ready:
                try:
                    client, addr = listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                        continue
                    raise
                with self._lock:
                    if self._active >= limit:
                        client.close()  # over the cap: the daemon retries on another connection
                        continue
                    self._active += 1
                threading.Thread(target=self._serve, args=(listener, client, addr), daemon=True).start()
        self._drain()

    def _drain(self) -> None:
        """Let connections in flight finish their current request (graceful_timeout at most)."""
        deadline = self.cfg.graceful_timeout
        waited = 0.0
        while self._active and waited < deadline:
            self.notify()
            threading.Event().wait(0.1)
            waited += 0.1

    def _serve(self, listener: socket.socket, client: socket.socket, addr: Any) -> None:
        client.setblocking(True)
        client.settimeout(self.cfg.keepalive or None)  # an idle connection is closed after keepalive
        util.close_on_exec(client)
        request = None
        try:
            parser = http.get_parser(self.cfg, client, addr)
            for request in parser:
                if not self._handle(listener, request, client, addr) or not self.alive:
                    break
        except (TimeoutError, http.errors.NoMoreData, StopIteration):
            pass  # idle keep-alive connection or the client hung up: nothing to answer
        except OSError as exc:
            if exc.errno not in _QUIET_ERRORS:
                self.log.exception("Socket error processing request.")
        except BaseException as exc:  # a malformed request gets gunicorn's 400, never a dead worker
            self.handle_error(request, client, addr, exc)
        finally:
            util.close(client)
            with self._lock:
                self._active -= 1

    def _handle(self, listener: socket.socket, request: Any, client: socket.socket, addr: Any) -> bool:
        """Answer one request; whether the connection may carry another."""
        response, environ = wsgi.create(request, client, addr, listener.getsockname(), self.cfg)
        self.nr += 1
        if self.nr >= self.max_requests:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
            response.force_close()
        body = self.wsgi(environ, response.start_response)
        try:
            for chunk in body:
                response.write(chunk)
            response.close()
        finally:
            if hasattr(body, "close"):
                body.close()
        return not response.should_close()
