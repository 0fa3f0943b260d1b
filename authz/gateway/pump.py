"""Bytes both ways between a caller's unix connection and a TLS connection to the daemon.

One thread per connection runs a ``poll`` loop over the two sockets. TLS runs in an
``ssl.SSLObject`` over memory BIOs on a plain TCP socket, for two reasons:

- one thread owns all TLS state (an OpenSSL connection must not be read and written from two
  threads at once, which two blocking pump threads on one ``SSLSocket`` would do);
- a caller's half-close can be passed on exactly as the docker CLI does on its own TLS
  connections: shut down the write half of the TCP connection beneath TLS, which Go's
  ``tls.Conn`` reads as ``io.EOF`` (``SSLSocket.shutdown`` would throw the TLS state away).

Nothing here parses HTTP: keep-alive, hijacked attach/exec streams, ``logs -f`` and ``events``
are all just bytes. Buffers are bounded per direction (``HIGH_WATER``), so a slow reader on one
side slows the writer on the other instead of growing memory.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from dataclasses import dataclass

__all__ = ["BUFSIZE", "HIGH_WATER", "Pump", "PumpResult", "TlsChannel", "tls_handshake"]

BUFSIZE = 64 * 1024
HIGH_WATER = 256 * 1024  # per direction: stop reading a side while this much waits for the other

_IN = select.POLLIN
_OUT = select.POLLOUT
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


@dataclass(frozen=True, slots=True)
class TlsChannel:
    """A TCP socket with an established TLS session driven through memory BIOs."""

    sock: socket.socket
    tls: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO


def tls_handshake(
    sock: socket.socket,
    context: ssl.SSLContext,
    server_hostname: str,
    timeout: float,
    session: ssl.SSLSession | None = None,
) -> TlsChannel:
    """Run the client handshake on the connected ``sock`` within ``timeout`` seconds.

    Raises ``ssl.SSLError`` (e.g. the daemon's certificate does not verify), ``TimeoutError`` or
    ``ConnectionError``. In TLS 1.3 the daemon judges our client certificate after this returns;
    a rejection then arrives as an alert on the first read, and the pump ends with that error.
    ``session`` (from an earlier connection with the same ``context``) is offered for resumption;
    the server may refuse it and do a full handshake.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_hostname, session=session)
    deadline = time.monotonic() + timeout
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            _send_before(sock, outgoing.read(), deadline)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = sock.recv(BUFSIZE)
            if not data:
                raise ConnectionError("the daemon closed the connection during the TLS handshake") from None
            incoming.write(data)
    _send_before(sock, outgoing.read(), deadline)  # our Finished (and certificate, in TLS 1.3)
    return TlsChannel(sock, tls, incoming, outgoing)


def _send_before(sock: socket.socket, data: bytes, deadline: float) -> None:
    if data:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.sendall(data)


@dataclass(frozen=True, slots=True)
class PumpResult:
    """How a connection ended: bytes each way (plaintext) and why it stopped."""

    to_daemon: int
    to_client: int
    reason: str  # "closed" for an orderly end, else what failed
    error: bool


class Pump:
    """Forward between ``client`` (plain AF_UNIX) and ``channel`` until both sides are done.

    ``run()`` owns both sockets' I/O but does not close them: the caller does, in ``finally``.
    ``abort()`` may be called from any thread; it makes ``run()`` return soon.
    """

    def __init__(self, client: socket.socket, channel: TlsChannel) -> None:
        self.client = client
        self.raw = channel.sock
        self.tls = channel.tls
        self.incoming = channel.incoming
        self.outgoing = channel.outgoing
        self.up = bytearray()  # ciphertext for the daemon
        self.down = bytearray()  # plaintext for the client
        self.client_eof = False  # the client sent FIN: nothing more will come from it
        self.client_gone = False  # ... and closed its end entirely: nobody reads what we send
        self.raw_eof = False  # TCP FIN from the daemon
        self.daemon_eof = False  # no more plaintext will come from the daemon
        self.up_shut = False  # we passed the client's FIN on to the daemon
        self.down_shut = False  # we passed the daemon's end on to the client
        self.to_daemon = 0
        self.to_client = 0
        self._aborted = False

    def abort(self) -> None:
        """Stop from another thread: shut both sockets down, which wakes the poll loop."""
        self._aborted = True
        for sock in (self.client, self.raw):
            with contextlib.suppress(OSError):  # already closed: nothing left to wake
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> PumpResult:
        try:
            reason = self._loop()
        except _ClientLeft as exc:
            # the caller died or was killed mid-stream (`docker events | head -1`): routine
            return self._result(f"client left: {exc.__cause__}", error=False)
        except (OSError, ssl.SSLError) as exc:
            return self._result(f"{type(exc).__name__}: {exc}", error=True)
        return self._result(reason, error=reason != "closed")

    def _result(self, reason: str, *, error: bool) -> PumpResult:
        if self._aborted:
            reason, error = "aborted: the gateway is stopping", False
        return PumpResult(self.to_daemon, self.to_client, reason, error)

    def _loop(self) -> str:
        self.client.setblocking(False)
        self.raw.setblocking(False)
        poller = select.poll()
        cfd, rfd = self.client.fileno(), self.raw.fileno()
        masks: dict[int, int | None] = {cfd: None, rfd: None}  # None: not registered
        while True:
            self._decrypt()
            self._flush()
            # ENOTCONN here means the peer already reset: nothing is left to tell it
            if self.client_eof and not self.up and not self.up_shut:
                with contextlib.suppress(OSError):
                    self.raw.shutdown(socket.SHUT_WR)  # as the docker CLI does beneath TLS
                self.up_shut = True
            if self.daemon_eof and not self.down and not self.down_shut:
                with contextlib.suppress(OSError):
                    self.client.shutdown(socket.SHUT_WR)
                self.down_shut = True
            if self.up_shut and self.down_shut:
                return "closed"
            if self.client_gone and not self.up:
                return "closed"  # the caller left; what the daemon still says has no reader
            if self._aborted:
                return "aborted"
            wanted = {cfd: self._client_mask(), rfd: self._raw_mask()}
            for fd, mask in wanted.items():
                if mask == masks[fd]:
                    continue
                if mask is None:
                    poller.unregister(fd)
                elif masks[fd] is None:
                    poller.register(fd, mask)
                else:
                    poller.modify(fd, mask)
                masks[fd] = mask
            if masks[cfd] is None and masks[rfd] is None:
                return "stalled: nothing left to wait for"  # defensive: poll() would block forever
            for fd, events in poller.poll():
                if fd == cfd:
                    self._on_client(events, masks[cfd] or 0)
                else:
                    self._on_raw(events, masks[rfd] or 0)

    def _client_mask(self) -> int | None:
        mask = 0
        if not self.client_eof and len(self.up) < HIGH_WATER:
            mask |= _IN
        if self.down and not self.down_shut:
            mask |= _OUT
        if mask == 0 and self.client_eof and not self.client_gone:
            return 0  # registered for POLLHUP only: learn when the caller closes entirely
        return mask or None

    def _raw_mask(self) -> int | None:
        mask = 0
        if not self.raw_eof and not self.daemon_eof and len(self.down) < HIGH_WATER:
            mask |= _IN
        if self.up and not self.up_shut:
            mask |= _OUT
        return mask or None

    def _on_client(self, events: int, mask: int) -> None:
        if events & _OUT:
            _send_to_client(self.client, self.down)
        if mask & _IN and events & (_IN | _GONE):
            try:
                data = self.client.recv(BUFSIZE)
            except BlockingIOError:
                return
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise _ClientLeft from exc
            if data:
                self.to_daemon += len(data)
                self.tls.write(data)  # into a memory BIO: always accepted whole
                self.up += self.outgoing.read()
            else:
                self.client_eof = True
        elif events & _GONE and self.client_eof:
            self.client_gone = True

    def _on_raw(self, events: int, mask: int) -> None:
        if events & _OUT:
            _send_some(self.raw, self.up)
        if mask & _IN and events & (_IN | _GONE):
            try:
                data = self.raw.recv(BUFSIZE)
            except BlockingIOError:
                return
            if data:
                self.incoming.write(data)
            else:
                self.raw_eof = True
                self.incoming.write_eof()

    def _decrypt(self) -> None:
        """Move plaintext from the TLS session into ``down`` while there is room."""
        if self.daemon_eof:
            return
        while len(self.down) < HIGH_WATER and (self.incoming.pending or self.tls.pending() or self.raw_eof):
            try:
                chunk = self.tls.read(BUFSIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # close_notify, or a TCP FIN without it: either way the daemon has said all
                self.daemon_eof = True
                break
            if not chunk:
                self.daemon_eof = True
                break
            self.to_client += len(chunk)
            self.down += chunk
        # reading may have produced records to send (TLS 1.3 key updates)
        if self.outgoing.pending:
            self.up += self.outgoing.read()

    def _flush(self) -> None:
        if self.up and not self.up_shut:
            _send_some(self.raw, self.up)
        if self.down and not self.down_shut:
            _send_to_client(self.client, self.down)


class _ClientLeft(Exception):
    """The caller's end reset or vanished; ``__cause__`` is the socket error."""


def _send_to_client(sock: socket.socket, buf: bytearray) -> None:
    try:
        _send_some(sock, buf)
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise _ClientLeft from exc


def _send_some(sock: socket.socket, buf: bytearray) -> None:
    """Send from the front of ``buf`` until it is empty or the socket would block."""
    while buf:
        try:
            sent = sock.send(buf)
        except BlockingIOError:
            return
        del buf[:sent]
