"""The gateway server: a unix socket whose callers reach the daemon's TLS port as themselves.

For each accepted connection: ``SO_PEERCRED`` → uid → authz user (``users``) → a client
certificate with that CN (cached per user, re-issued at half its lifetime) → a TLS connection to
the daemon that verifies the daemon against the gateway CA → ``pump.Pump`` until both sides are
done. The caller cannot choose its identity: the gateway never reads the bytes it forwards.

Client keys live only in memory (an anonymous ``memfd`` hands them to OpenSSL, never a file).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import select
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from authz.errors import ConfigError
from authz.gateway.ca import CertificateAuthority, IssuedCert
from authz.gateway.pump import Pump, tls_handshake
from authz.gateway.users import ANONYMOUS, UserMap, peer_credentials

__all__ = ["ClientContexts", "ClientCredential", "DaemonAddress", "Gateway", "bind_unix_socket"]

log = logging.getLogger(__name__)

CLIENT_CERT_LIFETIME = dt.timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class DaemonAddress:
    """Where the daemon's ``--tlsverify`` listener is; ``host`` is also the name its cert must carry."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> DaemonAddress:
        """``tcp://HOST:PORT`` (IPv6 in brackets); anything else is a ``ConfigError``."""
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"--daemon {url!r}: bad port: {exc}") from exc
        if parts.scheme != "tcp" or not parts.hostname or port is None or parts.path not in ("", "/"):
            raise ConfigError(f"--daemon must look like tcp://127.0.0.1:2376, got {url!r}")
        return cls(parts.hostname, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


@dataclass(slots=True)
class ClientCredential:
    """One user's TLS client state: a context holding their certificate, and a session to resume.

    The session is only ever offered for this user's own connections; the daemon re-verifies the
    certificate from the ticket on resumption and still reports its CN as ``User``.
    """

    context: ssl.SSLContext
    renew_at: float
    session: ssl.SSLSession | None = None  # replaced as connections finish; no lock needed


class ClientContexts:
    """One ``ClientCredential`` per authz user, holding a short-lived client certificate for it."""

    def __init__(
        self,
        ca: CertificateAuthority,
        lifetime: dt.timedelta = CLIENT_CERT_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lifetime < dt.timedelta(minutes=2):
            raise ConfigError(f"client certificate lifetime {lifetime} is too short to be useful")
        self.ca = ca
        self.lifetime = lifetime
        self.clock = clock
        self._ca_pem = ca.cert_pem.decode("ascii")
        self._lock = threading.Lock()
        self._cache: dict[str, ClientCredential] = {}

    def credential_for(self, user: str) -> ClientCredential:
        """A credential with CN ``user``, valid for at least half of its lifetime from now."""
        now = self.clock()
        with self._lock:
            cached = self._cache.get(user)
            if cached is not None and now < cached.renew_at:
                return cached
            issued = self.ca.issue_client(user, self.lifetime, dt.datetime.fromtimestamp(now, dt.UTC))
            fresh = ClientCredential(client_context(self._ca_pem, issued), now + self.lifetime.total_seconds() / 2)
            self._cache[user] = fresh
            # drop entries past renewal: users who stopped calling should not pin memory forever
            for name in [n for n, c in self._cache.items() if c.renew_at <= now]:
                del self._cache[name]
            return fresh

    def context_for(self, user: str) -> ssl.SSLContext:
        """``credential_for(user).context``."""
        return self.credential_for(user).context


def client_context(ca_pem: str, issued: IssuedCert) -> ssl.SSLContext:
    """TLS ≥ 1.2 client context: verify the daemon against ``ca_pem``, present ``issued``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=ca_pem)
    fd = os.memfd_create("authz-gateway-client", os.MFD_CLOEXEC)
    try:
        os.write(fd, issued.cert_pem + issued.key_pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context


def bind_unix_socket(path: Path, mode: int, gid: int | None) -> socket.socket:
    """Listen on ``path`` with ``mode``/``gid``; replace a stale socket, refuse a live one or a file."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(info.st_mode):
            raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # stale: its server is gone
        else:
            raise ConfigError(f"something is already serving on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # born 0600: nobody connects before mode and group are set
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, mode)
    sock.listen(128)
    return sock


class Gateway:
    """Accept on the unix socket, one thread per connection; ``close()`` stops everything."""

    def __init__(
        self,
        listener: socket.socket,
        daemon: DaemonAddress,
        contexts: ClientContexts,
        user_map: Callable[[], UserMap],
        *,
        os_fallback: bool = True,
        refuse_anonymous: bool = False,
        max_connections: int = 512,
        timeout: float = 10.0,
    ) -> None:
        self.listener = listener
        self.listener.setblocking(False)  # poll() said readable, but the caller may be gone by accept()
        self.path = Path(listener.getsockname())
        self._inode = os.stat(self.path).st_ino
        self.daemon = daemon
        self.contexts = contexts
        self.user_map = user_map
        self.os_fallback = os_fallback
        self.refuse_anonymous = refuse_anonymous
        self.max_connections = max_connections
        self.timeout = timeout
        self._lock = threading.Lock()
        self._active: dict[int, tuple[socket.socket, Pump | None]] = {}  # id(client socket) → …
        self._threads: set[threading.Thread] = set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._closing = False

    def serve_forever(self) -> None:
        """Accept until ``close()``; then wait for the connection threads and clean up."""
        poller = select.poll()
        poller.register(self.listener.fileno(), select.POLLIN)
        poller.register(self._wake_r.fileno(), select.POLLIN)
        try:
            while not self._closing:
                for fd, _ in poller.poll():
                    if fd == self.listener.fileno() and not self._closing:
                        self._accept()
        finally:
            self._shutdown()

    def close(self) -> None:
        """Stop accepting and abort every connection; safe from a signal handler or another thread."""
        self._closing = True
        with contextlib.suppress(OSError):  # already shut down: nothing to wake
            self._wake_w.send(b"x")

    def active_connections(self) -> int:
        with self._lock:
            return len(self._active)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:  # EMFILE/ENFILE/ENOBUFS: the caller waits in the backlog; don't spin
            log.warning("gateway: accept failed: %s", exc)
            time.sleep(0.1)
            return
        with self._lock:
            if len(self._active) >= self.max_connections:
                conn.close()
                log.warning("gateway: refused a connection: %d connections open", self.max_connections)
                return
            self._active[id(conn)] = (conn, None)
            thread = threading.Thread(target=self._serve, args=(conn,), name="gateway-conn", daemon=True)
            self._threads.add(thread)
        thread.start()

    def _serve(self, client: socket.socket) -> None:
        key = id(client)
        upstream: socket.socket | None = None
        started = time.monotonic()
        who = "pid=? uid=? user=?"
        try:
            creds = peer_credentials(client)
            identity = self.user_map().resolve(creds.uid, os_fallback=self.os_fallback)
            who = f"pid={creds.pid} uid={creds.uid} gid={creds.gid} user={identity.user}"
            log.info("gateway: connection %s (%s)", who, identity.source)
            if identity.user == ANONYMOUS and self.refuse_anonymous:
                log.info("gateway: closed %s: anonymous callers are refused (--refuse-anonymous)", who)
                return
            credential = self.contexts.credential_for(identity.user)
            upstream = socket.create_connection((self.daemon.host, self.daemon.port), self.timeout)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # requests are small writes
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # streams idle for hours
            channel = tls_handshake(upstream, credential.context, self.daemon.host, self.timeout, credential.session)
            pump = Pump(client, channel)
            with self._lock:
                self._active[key] = (client, pump)
            if self._closing:
                pump.abort()
            result = pump.run()
            session = channel.tls.session
            if session is not None and session.has_ticket:  # TLS 1.3 tickets come after the handshake
                credential.session = session
            level = logging.WARNING if result.error else logging.DEBUG
            log.log(
                level,
                "gateway: closed %s after %.1fs (tls %s): %s (%d bytes to daemon, %d to client)",
                who,
                time.monotonic() - started,
                "resumed" if channel.tls.session_reused else "full handshake",
                result.reason,
                result.to_daemon,
                result.to_client,
            )
        except Exception as exc:  # one broken connection must not stop the gateway
            log.warning("gateway: connection %s to %s failed: %s: %s", who, self.daemon, type(exc).__name__, exc)
        finally:
            with self._lock:
                self._active.pop(key, None)
                self._threads.discard(threading.current_thread())
            if upstream is not None:
                upstream.close()
            client.close()

    def _shutdown(self, wait: float = 5.0) -> None:
        self.listener.close()
        try:  # only our own socket file: a newer gateway may have replaced it
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except OSError:
            pass
        with self._lock:
            active = list(self._active.values())
            threads = list(self._threads)
        for conn, pump in active:
            if pump is not None:
                pump.abort()
            else:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + wait
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.01))
        self._wake_r.close()
        self._wake_w.close()
