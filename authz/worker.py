"""A gunicorn worker made for dockerd: one thread per keep-alive connection.

dockerd keeps a few persistent connections to its plugin and sends every AuthZReq/AuthZRes over
them. gunicorn's ``gthread`` worker hands each request from its poller thread to a pool thread and
back, and ``sync`` closes the connection after every request; both pay for it on every call. Here
a connection's thread reads its requests in a loop, exactly like the daemon's own HTTP client
expects, and the main thread only accepts connections and keeps the arbiter's heartbeat.

dockerd's own posts (``POST /AuthZPlugin.AuthZReq HTTP/1.1`` with a ``Content-Length``) are read
by a small parser that accepts only that exact, well-formed shape and calls the protocol handler
directly: gunicorn's general parser and the WSGI layer cost as much as a decision. Anything else
(another path, chunked bodies, ``Expect``, odd header syntax, HTTP/1.0) is handed, with the bytes
already read, to gunicorn's parser and the full app for the rest of that connection.

Every worker waits on the one socket, and whichever accepts first takes the connection: dockerd's
two kept connections could both land on one worker, which then decides everything while the other
idles. The workers publish how many connections each serves (``ConnectionCounts``, shared
memory the master sets up before forking them), and one that serves more than another lets it
accept first.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import select
import socket
import struct
import threading
import time
from typing import Any

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.workers import base

from authz.server import MAX_PLUGIN_REQUEST, ProtocolRoutes, answer_oversized

QUIET_ERRORS = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF)
MAX_HEAD = 32 * 1024  # dockerd's plugin requests carry five short headers
_READ = 256 * 1024
# How long a worker serving more connections than another waits for that one to accept a new
# connection before it accepts it itself (the other may be stopping, or its main thread waiting
# for the GIL, which a busy thread holds for up to the 5 ms switch interval).
ACCEPT_GRACE = 0.005
# The only head shape answered without gunicorn: ``POST <path> HTTP/1.1`` and header lines of a
# token name, a colon, optional blanks and a printable ASCII value. Anything else (control bytes,
# tabs or non-ASCII inside values, obs-fold lines, a space before the colon) goes to the general
# parser, which is only slower.
_FAST_HEAD = re.compile(rb"POST (/[\x21-\x7e]*) HTTP/1\.1((?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*[\x20-\x7e]*)*)")
# The headers that frame the body or the connection (by their own line: ``\r\n`` first).
_FRAMING = re.compile(rb"\r\n(content-length|transfer-encoding|expect|upgrade|connection):[ \t]*([\x20-\x7e]*)", re.I)
_REPLY_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"


def reply_bytes(payload: bytes, close: bool) -> bytes:
    """The whole HTTP response carrying a protocol reply (``Connection: close`` if ``close``)."""
    return (_REPLY_HEAD % (len(payload), b"Connection: close\r\n" if close else b"")) + payload


def fast_head(head: bytes) -> tuple[str, int, bool] | None:
    """``(path, content_length, close)`` for a plain ``POST … HTTP/1.1`` head; None for anything else.

    ``head`` excludes the blank line. Only the shape dockerd sends is accepted: one
    ``Content-Length`` of digits, no ``Transfer-Encoding``/``Expect``/``Upgrade``, no folded or
    malformed header lines, no control bytes. Two regular expressions: splitting the lines and
    reading each in Python took 12.5 µs of every request, these 5.4 (the same run).
    """
    match = _FAST_HEAD.fullmatch(head)
    if match is None:
        return None
    length: int | None = None
    close = False
    for name, raw_value in _FRAMING.findall(match[2]):
        key = name.lower()
        value = raw_value.rstrip(b" \t")
        if key == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif key == b"connection":
            tokens = {token.strip().lower() for token in value.split(b",")}
            if b"upgrade" in tokens:
                return None
            close = b"close" in tokens
        else:  # transfer-encoding, expect, upgrade
            return None
    if length is None:
        return None
    return match[1].decode("ascii"), length, close


def kernel_timeouts(client: socket.socket, seconds: float) -> None:
    """Block in the kernel, with ``seconds`` as the limit of each receive and send.

    An idle keep-alive connection is closed after ``seconds``. A Python socket timeout would do
    the same, but CPython then polls before every ``recv`` and ``send``: twice the system calls,
    and twice the handing over of the GIL between a worker's connection threads, on every
    request. With ``SO_RCVTIMEO``/``SO_SNDTIMEO`` the socket stays blocking, and a call that
    times out fails with ``EAGAIN`` (``BlockingIOError``).
    """
    client.setblocking(True)
    if seconds:
        limit = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)


class _Replay:
    """The client socket, whose first reads return the bytes the fast path already took from it."""

    def __init__(self, sock: socket.socket, pending: bytes) -> None:
        self._sock = sock
        self._pending = pending

    def recv(self, size: int) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:size], self._pending[size:]
            return data
        return self._sock.recv(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class ConnectionCounts:
    """How many connections each worker serves, in memory the master maps before forking them.

    One 32-bit slot per worker (``VACANT`` while no worker accepts through it): the master gives a
    slot to each worker it forks and vacates it when the worker is gone; the worker writes its own
    count from when it starts accepting until it stops. Aligned 32-bit reads and writes are whole
    on every platform we run on, so no lock.
    """

    VACANT = -1

    def __init__(self, slots: int) -> None:
        self._memory = mmap.mmap(-1, 4 * slots)  # anonymous and shared: every forked worker sees it
        self._counts = memoryview(self._memory).cast("i")
        for slot in range(slots):
            self._counts[slot] = self.VACANT

    @property
    def slots(self) -> int:
        return len(self._counts)

    def vacate(self, slot: int) -> None:
        self._counts[slot] = self.VACANT

    def publish(self, slot: int, connections: int) -> None:
        self._counts[slot] = connections

    def fewer_elsewhere(self, slot: int, connections: int) -> bool:
        """Whether a live worker other than ``slot``'s serves fewer than ``connections``."""
        return any(0 <= count < connections for other, count in enumerate(self._counts.tolist()) if other != slot)


class ConnectionThreadWorker(base.Worker):  # type: ignore[misc]  # gunicorn ships no type hints
    """``worker_class = "authz.worker.ConnectionThreadWorker"``; ``worker_connections`` caps threads."""

    alive: bool  # set by gunicorn's base worker
    # Set by the master before the fork (``authz.serve``); without them connections are not balanced.
    authz_connection_counts: ConnectionCounts | None = None
    authz_slot: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._active = 0
        self._lock = threading.Lock()

    def _count(self, change: int) -> None:
        """Change the number of connections served (under ``self._lock``) and publish it."""
        self._active += change
        if self.authz_connection_counts is not None and self.authz_slot is not None:
            self.authz_connection_counts.publish(self.authz_slot, self._active)

    def _stop_counting(self) -> None:
        """This worker accepts no more connections: others must not wait for it to."""
        with self._lock:
            if self.authz_connection_counts is not None and self.authz_slot is not None:
                self.authz_connection_counts.vacate(self.authz_slot)
            self.authz_connection_counts = None

    def _another_serves_fewer(self) -> bool:
        counts, slot = self.authz_connection_counts, self.authz_slot
        if not self._active or counts is None or slot is None:
            return False
        return counts.fewer_elsewhere(slot, self._active)

    def run(self) -> None:
        for listener in self.sockets:
            listener.setblocking(False)
        with self._lock:
            self._count(0)  # accepting from now on: the other workers count this one
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
            if ready and self._another_serves_fewer():
                time.sleep(ACCEPT_GRACE)  # let it take the connection; take it after all if it does not
            for listener in ready:
                taken = self._take(listener)
                if taken is not None:
                    threading.Thread(target=self._serve, args=(listener, *taken), daemon=True).start()
        self._stop_counting()
        self._drain()

    def _take(self, listener: socket.socket) -> tuple[socket.socket, Any] | None:
        """Accept a waiting connection and count it: ``(client, addr)``, or None when there was none
        or this worker serves ``worker_connections`` already."""
        try:
            client, addr = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return None
            raise
        with self._lock:
            if self._active >= max(1, int(self.cfg.worker_connections)):
                client.close()  # over the cap: the daemon retries on another connection
                return None
            self._count(+1)
        return client, addr

    def _drain(self) -> None:
        """Let connections in flight finish their current request (graceful_timeout at most)."""
        deadline = self.cfg.graceful_timeout
        waited = 0.0
        while self._active and waited < deadline:
            self.notify()
            threading.Event().wait(0.1)
            waited += 0.1

    def _serve(self, listener: socket.socket, client: socket.socket, addr: Any) -> None:
        kernel_timeouts(client, self.cfg.keepalive)
        util.close_on_exec(client)
        routes: ProtocolRoutes | None = getattr(self.wsgi, "extensions", {}).get("authz.protocol_routes")
        self._serve_general(listener, client, addr, b"", routes)

    def _serve_general(
        self, listener: socket.socket, client: socket.socket, addr: Any, leftover: bytes,
        routes: ProtocolRoutes | None = None,
    ) -> None:  # fmt: skip
        """Serve ``client`` until it closes: dockerd's posts through ``routes`` (if given), then
        anything else through gunicorn's parser, starting with the bytes already read
        (``leftover``). Closes the connection and uncounts it at the end."""
        request = None
        try:
            if routes is not None:
                after = self._serve_protocol(client, routes)
                if after is None:
                    return
                leftover = after
            parser = http.get_parser(self.cfg, _Replay(client, leftover), addr)
            for request in parser:
                if not self._handle(listener, request, client, addr) or not self.alive:
                    break
        except (TimeoutError, BlockingIOError, http.errors.NoMoreData, StopIteration):
            pass  # idle keep-alive connection or the client hung up: nothing to answer
        except OSError as exc:
            if exc.errno not in QUIET_ERRORS:
                self.log.exception("Socket error processing request.")
        except BaseException as exc:  # a malformed request gets gunicorn's 400, never a dead worker
            self.handle_error(request, client, addr, exc)
        finally:
            util.close(client)
            with self._lock:
                self._count(-1)

    def _serve_protocol(self, client: socket.socket, routes: ProtocolRoutes) -> bytes | None:
        """Answer dockerd's posts; the unparsed bytes when a request needs the general parser,
        None when the connection is finished."""
        buf = b""
        while self.alive:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > MAX_HEAD or b"\n\n" in buf:
                    return buf  # oversized or bare-LF heads: the general parser answers them
                chunk = client.recv(_READ)
                if not chunk:
                    return None
                buf += chunk
                end = buf.find(b"\r\n\r\n")
            head = fast_head(buf[:end])
            handler = None if head is None else routes.get(head[0])
            if head is None or handler is None:
                return buf
            _, length, close = head
            if length > MAX_PLUGIN_REQUEST:
                self._reply(client, answer_oversized(), close=True)
                return None  # the body is not read, so the connection cannot carry another request
            start = end + 4
            body = self._read_body(client, buf, start, length)
            if body is None:
                return None
            raw, buf = body
            self.nr += 1
            if self.nr >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            close = close or not self.alive
            self._reply(client, handler(raw), close)
            if close:
                return None
        return None

    @staticmethod
    def _read_body(client: socket.socket, buf: bytes, start: int, length: int) -> tuple[bytes, bytes] | None:
        """``(body, the bytes after it)``, reading from ``client`` what ``buf`` lacks; None on hang-up."""
        have = len(buf) - start
        if have >= length:
            return buf[start : start + length], buf[start + length :]
        body = bytearray(length)
        body[:have] = buf[start:]
        view = memoryview(body)
        while have < length:
            got = client.recv_into(view[have:], min(length - have, _READ * 4))
            if not got:
                return None
            have += got
        return bytes(body), b""

    @staticmethod
    def _reply(client: socket.socket, payload: bytes, close: bool) -> None:
        client.sendall(reply_bytes(payload, close))

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
