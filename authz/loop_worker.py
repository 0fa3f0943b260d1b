"""A gunicorn worker that serves all its connections from one thread at a time (leader/followers).

With a thread per connection (``authz.worker.ConnectionThreadWorker``) every request wakes its
connection's thread, which must then win the GIL from the worker's other connection threads:
``perf stat`` counted 3.5 context switches and 3.4-3.9 futex calls per request at 8 connections.
Here one thread, the leader, waits on an ``epoll`` set holding the listening socket and every
idle connection, reads whatever request is ready, decides it and answers, all without handing
the GIL to anyone.

A decision that must wait on something outside the process says so first
(``authz.blocking.about_to_wait``: SQLite's write lock, a PostgreSQL round trip, the image
lookup through the daemon, a group fsync). The leader then takes that connection out of the
set and hands the loop to a follower thread (a parked one, or a new one), finishes the request
itself, puts the connection back and parks as a follower. So a slow store holds up only its own
request, and the image lookup, which the daemon authorizes through this plugin, perhaps on
another connection of this worker, is answered by the new leader instead of waiting on itself.

Only dockerd's own posts are read here (``authz.worker.fast_head``); a connection that sends
anything else leaves the set for a thread of its own running gunicorn's parser and the full app,
as in ``ConnectionThreadWorker``.
"""

from __future__ import annotations

import functools
import os
import select
import socket
import threading
import time
from typing import Any

from gunicorn import util

from authz.blocking import about_to_wait, set_hand_off
from authz.server import MAX_PLUGIN_REQUEST, ProtocolRoutes, answer_oversized
from authz.worker import (
    ACCEPT_GRACE,
    MAX_HEAD,
    QUIET_ERRORS,
    ConnectionThreadWorker,
    fast_head,
    kernel_timeouts,
    reply_bytes,
)

_READ = 256 * 1024
_IN = select.EPOLLIN
_SPARE_FOLLOWERS = 2  # parked threads kept for the next hand-off; more are let go


class _Connection:
    """A client connection and what has been read of its next request."""

    __slots__ = ("addr", "buf", "fd", "last", "listener", "pending", "sock")

    def __init__(self, sock: socket.socket, addr: Any, listener: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.listener = listener
        self.buf = bytearray()
        # The parsed head of the request whose body is still arriving: (path, length, close, body start).
        self.pending: tuple[str, int, bool, int] | None = None
        self.last = time.monotonic()  # when bytes last arrived (idle connections are closed)


class _Tenure:
    """One thread's turn as the leader; ``serving`` is the connection it is answering."""

    __slots__ = ("over", "serving")

    def __init__(self) -> None:
        self.over = False
        self.serving: _Connection | None = None


class LoopWorker(ConnectionThreadWorker):
    """``worker_class = "authz.loop_worker.LoopWorker"``; ``worker_connections`` caps connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._leading = threading.Lock()  # held by the thread running the loop
        self._epoll: Any = None  # select.epoll, made in run(): after the fork
        self._idle: dict[int, _Connection] = {}  # fd -> connection waiting in the epoll set
        self._listeners: dict[int, socket.socket] = {}
        self._waiting = 0  # followers parked on self._leading (under self._lock)
        self._accept_paused_until = 0.0  # listeners out of the set until then (monotonic)
        self._last_beat = 0.0
        self._protocol: ProtocolRoutes = {}

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        # Without the protocol routes (another app) every connection goes to the general parser.
        self._protocol = getattr(self.wsgi, "extensions", {}).get("authz.protocol_routes") or {}
        self._epoll = select.epoll()
        for listener in self.sockets:
            listener.setblocking(False)
            self._listeners[listener.fileno()] = listener
            self._epoll.register(listener.fileno(), _IN)
        with self._lock:
            self._count(0)  # accepting from now on: the other workers count this one
        try:
            self._follow()
        finally:
            self._stop_counting()
            self._shut_down()

    def _follow(self) -> None:
        """Lead when the loop is free; park meanwhile; return when the worker stops."""
        while self.alive:
            with self._lock:
                self._waiting += 1
            try:
                # A timeout, so that the main thread sees a stop (signals run on it) within a second.
                got = self._leading.acquire(timeout=1.0)
            finally:
                with self._lock:
                    self._waiting -= 1
            if not got:
                continue
            tenure = _Tenure()
            set_hand_off(functools.partial(self._hand_off, tenure))
            try:
                self._lead(tenure)
            finally:
                set_hand_off(None)
                if not tenure.over:
                    self._leading.release()
            if tenure.over and threading.current_thread() is not threading.main_thread():
                with self._lock:
                    if self._waiting >= _SPARE_FOLLOWERS:
                        return  # enough threads parked already

    def _lead(self, tenure: _Tenure) -> None:
        while self.alive and not tenure.over:
            now = time.monotonic()
            if now - self._last_beat >= 1.0:
                self._beat(now)
                if not self.alive:
                    return
            timeout = 1.0
            if self._accept_paused_until:
                if now >= self._accept_paused_until:
                    self._resume_accepting()
                else:
                    timeout = self._accept_paused_until - now
            try:
                events = self._epoll.poll(timeout)
            except InterruptedError:
                continue
            for fd, _ in events:
                listener = self._listeners.get(fd)
                if listener is not None:
                    self._accept(listener)
                    continue
                conn = self._idle.get(fd)
                if conn is not None:
                    tenure.serving = conn
                    self._serve_ready(conn, tenure)
                    tenure.serving = None
                    if tenure.over:
                        return  # the loop is another thread's now; the rest of these events too

    def _beat(self, now: float) -> None:
        """The arbiter's heartbeat, and the idle connections' deadline."""
        self._last_beat = now
        self.notify()
        if self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            self.alive = False
            return
        limit = self.cfg.keepalive
        if limit:
            for conn in list(self._idle.values()):  # a copy: a finishing thread may add one meanwhile
                if now - conn.last > limit:
                    self._close(conn)

    def _hand_off(self, tenure: _Tenure) -> None:
        """The leader is about to wait: the loop goes on in another thread, without this connection."""
        tenure.over = True
        conn = tenure.serving
        if conn is not None:
            self._unregister(conn)
        with self._lock:
            spare = self._waiting > 0
        self._leading.release()
        if not spare:
            threading.Thread(target=self._follow, name="authz-loop", daemon=True).start()

    # ------------------------------------------------------------ connections

    def _accept(self, listener: socket.socket, grace: bool = True) -> None:
        if grace and self._another_serves_fewer():
            # Let the worker with fewer connections take it: listen again after the grace.
            for fd in self._listeners:
                self._epoll.modify(fd, 0)
            self._accept_paused_until = time.monotonic() + ACCEPT_GRACE
            return
        taken = self._take(listener)
        if taken is None:
            return
        client, addr = taken
        util.close_on_exec(client)
        kernel_timeouts(client, self.cfg.keepalive)  # bounds a send that must block (a full buffer)
        client.setblocking(False)
        conn = _Connection(client, addr, listener)
        self._idle[conn.fd] = conn
        self._epoll.register(conn.fd, _IN)

    def _resume_accepting(self) -> None:
        self._accept_paused_until = 0.0
        for fd, listener in self._listeners.items():
            self._epoll.modify(fd, _IN)
            self._accept(listener, grace=False)  # still waiting: nobody else took it, so take it now

    def _unregister(self, conn: _Connection) -> None:
        if self._idle.get(conn.fd) is conn:  # not another connection that reuses a closed one's fd
            del self._idle[conn.fd]
            self._epoll.unregister(conn.fd)

    def _register(self, conn: _Connection) -> None:
        self._idle[conn.fd] = conn
        self._epoll.register(conn.fd, _IN)  # the last touch: the leader may serve it at once

    def _close(self, conn: _Connection) -> None:
        self._unregister(conn)
        util.close(conn.sock)
        with self._lock:
            self._count(-1)

    def _shut_down(self) -> None:
        """Close the idle connections; let those in a request finish it (graceful_timeout at most).

        The loop is taken first, so no other thread leads; a thread still answering puts its
        connection back into the set when done, and it is closed on the next round.
        """
        deadline = time.monotonic() + self.cfg.graceful_timeout
        led = self._leading.acquire(timeout=self.cfg.graceful_timeout)
        try:
            while True:
                for conn in list(self._idle.values()):
                    self._close(conn)
                if not self._active or time.monotonic() >= deadline:
                    return
                self.notify()
                time.sleep(0.1)
        finally:
            if led:
                self._leading.release()

    # ------------------------------------------------------------ requests

    def _serve_ready(self, conn: _Connection, tenure: _Tenure) -> None:
        """Read what ``conn`` sent and answer every whole request in it; never raises."""
        try:
            keep = self._read_and_answer(conn)
        except OSError as exc:
            if exc.errno not in QUIET_ERRORS and not isinstance(exc, (BlockingIOError, TimeoutError)):
                self.log.exception("Socket error processing request.")
            keep = False
        except Exception:
            self.log.exception("Error processing request.")
            keep = False
        if keep is None:
            return  # handed to a thread of its own (the general parser)
        if not keep:
            self._close(conn)
        elif tenure.over:
            self._register(conn)  # this thread was handed the wait; the connection goes back

    def _read_and_answer(self, conn: _Connection) -> bool | None:
        """Whether the connection stays open; None when a general-parser thread took it."""
        try:
            chunk = conn.sock.recv(_READ)
        except BlockingIOError:
            return True  # a spurious wake-up
        if not chunk:
            return False
        conn.last = time.monotonic()
        buf = conn.buf
        buf += chunk
        routes = self._protocol
        while self.alive:
            if conn.pending is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD or b"\n\n" in buf:
                        self._to_general(conn)  # oversized or bare-LF heads: gunicorn answers them
                        return None
                    return True
                head = fast_head(bytes(buf[:end]))
                if head is None or routes.get(head[0]) is None:
                    self._to_general(conn)
                    return None
                path, length, close = head
                if length > MAX_PLUGIN_REQUEST:
                    self._send(conn.sock, answer_oversized(), close=True)
                    return False  # the body is not read, so the connection cannot carry another request
                conn.pending = (path, length, close, end + 4)
            path, length, close, start = conn.pending
            if len(buf) - start < length:
                return True  # the rest of the body comes later
            raw = bytes(buf[start : start + length])
            del buf[: start + length]
            conn.pending = None
            self.nr += 1
            if self.nr >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            close = close or not self.alive
            self._send(conn.sock, routes[path](raw), close)
            if close:
                return False
            if not buf:
                return True
        return False

    @staticmethod
    def _send(sock: socket.socket, payload: bytes, close: bool) -> None:
        data = reply_bytes(payload, close)
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            # The client's buffer is full: wait for it (SO_SNDTIMEO bounds the wait), off the loop.
            about_to_wait()
            sock.setblocking(True)
            try:
                sock.sendall(memoryview(data)[sent:])
            finally:
                sock.setblocking(False)

    def _to_general(self, conn: _Connection) -> None:
        """Serve the rest of this connection in a thread of its own, through gunicorn's parser."""
        self._unregister(conn)
        conn.sock.setblocking(True)  # SO_RCVTIMEO/SO_SNDTIMEO (kernel_timeouts) bound each call
        leftover = bytes(conn.buf)
        threading.Thread(
            target=self._serve_general, args=(conn.listener, conn.sock, conn.addr, leftover), daemon=True
        ).start()
