"""The plugin workers' HTTP handling on a real ``authzctl serve`` socket, byte for byte.

dockerd's well-formed posts take the worker's own small parser; every other shape must reach
gunicorn's parser and the full app with nothing lost or reordered, on the same connection. Each
test runs against both worker classes: the default loop worker (``authz.loop_worker``) and the
thread per connection one (``AUTHZ_WORKER_CLASS=authz.worker.ConnectionThreadWorker``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from authz.worker import fast_head, kernel_timeouts

PING = json.dumps({"RequestMethod": "GET", "RequestUri": "/_ping", "User": "", "UserAuthNMethod": ""}).encode()
VERSION = json.dumps({"RequestMethod": "GET", "RequestUri": "/v1.41/version"}).encode()
REQ = "/AuthZPlugin.AuthZReq"
RES = "/AuthZPlugin.AuthZRes"
WORKER_CLASSES = ["authz.loop_worker.LoopWorker", "authz.worker.ConnectionThreadWorker"]


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: plugin", "User-Agent: Go-http-client/1.1", f"Content-Length: {len(body)}"]
    head += [*extra, "Accept: application/vnd.docker.plugins.v1.2+json"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Reader:
    """Reads HTTP/1.1 responses with Content-Length or chunked bodies off one connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status = int(self._line().split()[1])
        headers: dict[str, str] = {}
        while line := self._line():
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            return status, headers, self._take(int(headers["content-length"]))
        body = b""
        while size := int(self._line(), 16):
            body += self._take(size)
            self._line()
        self._line()
        return status, headers, body

    def closed(self) -> bool:
        try:
            self._fill()
        except EOFError:
            return True
        return False


@contextlib.contextmanager
def serving(work: Path, authzctl: Path, workers: int = 1, **settings: str) -> Iterator[Path]:
    """``authzctl serve`` on ``work/p.sock``; ``settings`` are extra ``AUTHZ_*`` variables.
    The master's pid is written to ``work/master.pid``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    env.update(AUTHZ_STATE_DIR=str(work / "state"), AUTHZ_NODE="worker-test", **settings)
    subprocess.run([authzctl, "init"], env=env, check=True, capture_output=True, timeout=120)
    sock = work / "p.sock"
    log = (work / "serve.log").open("wb")
    proc = subprocess.Popen(
        [authzctl, "serve", "--socket", str(sock), "--workers", str(workers)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    (work / "master.pid").write_text(str(proc.pid))
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, (work / "serve.log").read_text()
            assert time.monotonic() < deadline, "plugin socket never appeared"
            time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture(scope="module", params=WORKER_CLASSES, ids=["loop", "thread"])
def worker_class(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def plugin_socket(
    tmp_path_factory: pytest.TempPathFactory, authzctl_bin_module: Path, worker_class: str
) -> Iterator[Path]:
    with serving(tmp_path_factory.mktemp("worker"), authzctl_bin_module, AUTHZ_WORKER_CLASS=worker_class) as sock:
        yield sock


def worker_pids(sock: Path) -> list[int]:
    """The plugin workers serving ``sock`` (the master's children, but for the audit shipper)."""
    master = (sock.parent / "master.pid").read_text()
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", master], check=False, capture_output=True, text=True)
    rows = [line.split(None, 1) for line in out.stdout.splitlines()]
    return sorted(int(pid) for pid, args in rows if "audit_ship_process" not in args)


def open_sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


@pytest.fixture(scope="module")
def authzctl_bin_module() -> Path:
    import sys

    path = Path(sys.executable).parent / "authzctl"
    assert path.exists(), f"console script missing at {path}"
    return path


Connect = Callable[[], tuple[socket.socket, Reader]]


def dial(path: Path, opened: list[socket.socket]) -> tuple[socket.socket, Reader]:
    """A connection to the plugin socket (retried while it starts), added to ``opened``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    opened.append(sock)
    deadline = time.monotonic() + 20
    while True:
        try:
            sock.connect(str(path))
            return sock, Reader(sock)
        except (FileNotFoundError, ConnectionRefusedError):
            assert time.monotonic() < deadline
            time.sleep(0.05)


@pytest.fixture
def connect(plugin_socket: Path) -> Iterator[Connect]:
    opened: list[socket.socket] = []
    yield lambda: dial(plugin_socket, opened)
    for sock in opened:
        sock.close()


@pytest.fixture
def connect_short_idle(
    tmp_path_factory: pytest.TempPathFactory, authzctl_bin_module: Path, worker_class: str
) -> Iterator[Connect]:
    """Connections to a plugin whose ``AUTHZ_IDLE_TIMEOUT`` is one second."""
    opened: list[socket.socket] = []
    work = tmp_path_factory.mktemp("idle")
    with serving(work, authzctl_bin_module, AUTHZ_IDLE_TIMEOUT="1", AUTHZ_WORKER_CLASS=worker_class) as path:
        yield lambda: dial(path, opened)
        for sock in opened:
            sock.close()


def test_keep_alive_and_pipelined_requests_are_answered_in_order(connect: Connect) -> None:
    sock, reader = connect()
    sock.sendall(post(REQ, PING))
    status, headers, body = reader.response()
    assert (status, headers["content-type"], json.loads(body)) == (200, "application/json", {"Allow": True})
    sock.sendall(post(REQ, VERSION) + post("/Plugin.Activate", b"") + post(REQ, PING))
    first, second, third = (json.loads(reader.response()[2]) for _ in range(3))
    assert first["Allow"] is False
    assert "anonymous" in first["Msg"]
    assert second == {"Implements": ["authz"]}
    assert third == {"Allow": True}


def test_a_request_sent_a_byte_at_a_time(connect: Connect) -> None:
    sock, reader = connect()
    for byte in post(REQ, PING):
        sock.sendall(bytes([byte]))
    assert json.loads(reader.response()[2]) == {"Allow": True}


def test_a_whole_request_then_part_of_the_next_in_one_send(connect: Connect) -> None:
    """The worker answers the whole request at once and keeps the head and part of the next
    one's body until the rest of it arrives, in two more pieces."""
    sock, reader = connect()
    second = post(REQ, VERSION)
    head_end = second.index(b"\r\n\r\n") + 4
    sock.sendall(post(REQ, PING) + second[: head_end + 10])
    assert json.loads(reader.response()[2]) == {"Allow": True}
    sock.sendall(second[head_end + 10 : head_end + 20])
    time.sleep(0.05)  # let the worker read this piece on its own
    sock.sendall(second[head_end + 20 :] + post(REQ, PING))
    assert "anonymous" in json.loads(reader.response()[2])["Msg"]
    assert json.loads(reader.response()[2]) == {"Allow": True}


def test_connection_close_is_honoured(connect: Connect) -> None:
    sock, reader = connect()
    sock.sendall(post(REQ, PING, "Connection: close"))
    _, headers, body = reader.response()
    assert json.loads(body) == {"Allow": True}
    assert headers.get("connection") == "close"
    assert reader.closed()


def test_chunked_body_goes_to_the_general_parser_and_is_decided(connect: Connect) -> None:
    sock, reader = connect()
    sock.sendall(post(REQ, PING))  # the fast path first, then the hand-over on the same connection
    assert json.loads(reader.response()[2]) == {"Allow": True}
    head = f"POST {REQ} HTTP/1.1\r\nHost: plugin\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (VERSION[:10], VERSION[10:])) + b"0\r\n\r\n"
    sock.sendall(head + chunks + post(REQ, PING))
    denied = json.loads(reader.response()[2])
    assert denied["Allow"] is False
    assert "anonymous" in denied["Msg"]
    assert json.loads(reader.response()[2]) == {"Allow": True}


def test_other_paths_reach_the_app(connect: Connect) -> None:
    sock, reader = connect()
    sock.sendall(post(REQ, PING) + b"GET /healthz HTTP/1.1\r\nHost: plugin\r\n\r\n")
    assert json.loads(reader.response()[2]) == {"Allow": True}
    status, _, body = reader.response()
    assert status == 200
    assert json.loads(body)["ok"] is True
    sock.sendall(post("/nowhere", b"{}"))
    status, _, body = reader.response()  # the app answers unknown paths with a JSON deny too
    assert status == 200
    assert json.loads(body)["Allow"] is False
    assert "404" in json.loads(body)["Msg"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        post(REQ, PING).replace(b"\r\n", b"\n"),  # bare LF
        f"POST {REQ} HTTP/1.1\r\nContent-Length: 1x\r\n\r\n{{".encode(),
        f"POST {REQ} HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}".encode(),
        f"POST {REQ} HTTP/1.1\r\nX\x00Y: z\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
    ],
    ids=["bare-lf", "bad-length", "two-lengths", "control-byte"],
)
def test_malformed_heads_get_the_general_parsers_answer(connect: Connect, request_bytes: bytes) -> None:
    sock, reader = connect()
    sock.sendall(request_bytes)
    status, _, body = reader.response()
    # gunicorn refuses what it cannot frame (400); what it can frame is decided by the app as a deny
    assert status == 400 or (status == 200 and json.loads(body)["Allow"] is False), (status, body)


def test_oversized_body_is_denied_without_reading_it(connect: Connect) -> None:
    sock, reader = connect()
    sock.sendall(f"POST {REQ} HTTP/1.1\r\nContent-Length: {1 << 40}\r\n\r\n".encode())
    status, _, body = reader.response()
    assert status == 200
    assert json.loads(body) == {"Allow": False, "Msg": "authz: denied: plugin request too large", "Err": "too large"}
    assert reader.closed()


def test_a_client_gone_mid_body_leaves_the_worker_serving(connect: Connect) -> None:
    sock, _ = connect()
    sock.sendall(post(REQ, PING)[:-5])
    sock.close()
    again, reader = connect()
    again.sendall(post(REQ, PING))
    assert json.loads(reader.response()[2]) == {"Allow": True}


def test_an_idle_connection_is_kept_between_calls_and_closed_after_the_idle_timeout(
    connect_short_idle: Connect,
) -> None:
    sock, reader = connect_short_idle()
    for _ in range(2):
        sock.sendall(post(REQ, PING))
        assert json.loads(reader.response()[2]) == {"Allow": True}
    # The plugin closes it after about a second; the client's own timeout (20 s) would raise.
    assert reader.closed()


def test_a_stalled_request_is_dropped_unanswered_and_the_worker_keeps_serving(connect_short_idle: Connect) -> None:
    stalled, stalled_reader = connect_short_idle()
    stalled.sendall(post(REQ, PING)[:-5])
    other, reader = connect_short_idle()
    other.sendall(post(REQ, PING))
    assert json.loads(reader.response()[2]) == {"Allow": True}
    assert stalled_reader.closed()  # no answer to half a request: the connection is closed


def test_kernel_timeouts_leave_the_socket_blocking_and_end_a_silent_receive() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        kernel_timeouts(ours, 1)
        # CPython polls before every receive and send only on a socket with a (Python) timeout.
        assert ours.gettimeout() is None
        with pytest.raises(BlockingIOError):
            ours.recv(1)
        peer.sendall(b"x")
        assert ours.recv(1) == b"x"


def test_connections_spread_evenly_over_the_workers_and_a_respawned_worker_takes_new_ones(
    tmp_path: Path, authzctl_bin_module: Path, worker_class: str
) -> None:
    """Whichever worker accepts first takes a connection; one that serves more lets the other go first.
    Without that, 8 connections split 5/3 or 6/2 in most runs, and two may land on one worker."""
    opened: list[socket.socket] = []
    with serving(tmp_path, authzctl_bin_module, workers=2, AUTHZ_WORKER_CLASS=worker_class) as path:
        deadline = time.monotonic() + 30
        while len(workers := worker_pids(path)) < 2:
            assert time.monotonic() < deadline, "two workers never started"
            time.sleep(0.1)
        idle = {pid: open_sockets(pid) for pid in workers}

        def connect_and_ask() -> None:
            sock, reader = dial(path, opened)
            sock.sendall(post(REQ, PING))
            assert json.loads(reader.response()[2]) == {"Allow": True}

        def settled(expected: Callable[[int], bool]) -> None:
            while not all(expected(open_sockets(pid) - idle[pid]) for pid in workers):
                assert time.monotonic() < deadline + 30, {pid: open_sockets(pid) - idle[pid] for pid in workers}
                time.sleep(0.05)

        try:
            # Until both workers accept (each builds its app after the fork), the one that does takes
            # every connection: probe until each holds one.
            while not all(open_sockets(pid) > idle[pid] for pid in workers):
                assert time.monotonic() < deadline + 30, "a worker never accepted a connection"
                connect_and_ask()
                if any(open_sockets(pid) - idle[pid] > 1 for pid in workers):
                    opened.pop().close()  # a worker holds two probes: keep it far below its cap (64)
                    settled(lambda extra: extra <= 1)
                    time.sleep(0.02)
            while opened:
                opened.pop().close()
            settled(lambda extra: extra == 0)
            for _ in range(8):
                connect_and_ask()  # one at a time: each accept sees the others' counts settled
            assert sorted(open_sockets(pid) - idle[pid] for pid in workers) == [4, 4]
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)  # its four connections end with it; the master forks another
            while len(respawned := [pid for pid in worker_pids(path) if pid not in workers]) < 1:
                assert time.monotonic() < deadline + 30, "the killed worker was never replaced"
                time.sleep(0.1)
            fresh, survivor = respawned[0], workers[1]
            idle[fresh] = open_sockets(fresh)
            workers = [fresh, survivor]
            # Until the new worker accepts, the survivor takes the probes: drop them.
            while open_sockets(fresh) == idle[fresh]:
                assert time.monotonic() < deadline + 60, "the new worker never accepted a connection"
                connect_and_ask()
                if open_sockets(survivor) - idle[survivor] > 4:
                    opened.pop().close()
                    settled(lambda extra: extra <= 4)
                    time.sleep(0.1)
            # The new worker's own start-up (its first policy compile, in a thread holding the GIL
            # for milliseconds) could keep it from accepting within the survivor's grace: let it end.
            probe, probe_reader = opened[-1], Reader(opened[-1])
            for _ in range(20):
                probe.sendall(post(REQ, PING))
                assert json.loads(probe_reader.response()[2]) == {"Allow": True}
            time.sleep(0.5)
            for _ in range(2):
                connect_and_ask()
            # The survivor serves four: the new worker (1, then 2 connections) takes the next two too.
            assert (open_sockets(fresh) - idle[fresh], open_sockets(survivor) - idle[survivor]) == (3, 4)
        finally:
            for sock in opened:
                sock.close()


def test_a_decision_waiting_for_the_database_holds_up_no_other_connection(
    tmp_path: Path, authzctl_bin_module: Path, worker_class: str
) -> None:
    """One worker, two connections: while the AuthZRes of a delete waits for SQLite's write lock
    (held here) to forget the container's owner, a request on the other connection is answered.
    The loop worker hands its loop to another thread before the wait (authz.blocking)."""
    delete = json.dumps({"RequestMethod": "DELETE", "RequestUri": "/v1.41/containers/" + "ab" * 32,
                         "ResponseStatusCode": 204}).encode()  # fmt: skip
    opened: list[socket.socket] = []
    with serving(tmp_path, authzctl_bin_module, workers=1, AUTHZ_WORKER_CLASS=worker_class) as path:
        try:
            waiting, waiting_reader = dial(path, opened)
            other, other_reader = dial(path, opened)
            for sock, reader in ((waiting, waiting_reader), (other, other_reader)):
                sock.sendall(post(REQ, PING))
                assert json.loads(reader.response()[2]) == {"Allow": True}
            writer = sqlite3.connect(tmp_path / "state" / "authz.db", isolation_level=None, timeout=30)
            try:
                writer.execute("BEGIN IMMEDIATE")  # the lock the delete's ownership change needs
                waiting.sendall(post(RES, delete))
                time.sleep(0.3)  # the delete has reached its wait
                other.sendall(post(REQ, PING))
                assert json.loads(other_reader.response()[2]) == {"Allow": True}
                assert select.select([waiting], [], [], 0)[0] == [], "the delete was answered without its lock"
            finally:
                writer.execute("ROLLBACK")
                writer.close()
            assert json.loads(waiting_reader.response()[2]) == {"Allow": True}
            for sock, reader in ((waiting, waiting_reader), (other, other_reader)):  # both still served
                sock.sendall(post(REQ, VERSION))
                assert json.loads(reader.response()[2])["Allow"] in (True, False)
        finally:
            for sock in opened:
                sock.close()


def test_a_large_response_body_arrives_whole(connect: Connect) -> None:
    import base64

    big = base64.b64encode(b"[" + b"{}," * 1_000_000 + b"{}]").decode()
    payload = json.dumps({"RequestMethod": "GET", "RequestUri": "/v1.41/containers/json", "ResponseBody": big})
    sock, reader = connect()
    sock.sendall(post("/AuthZPlugin.AuthZRes", payload.encode()) + post(REQ, PING))
    assert json.loads(reader.response()[2]) == {"Allow": True}
    assert json.loads(reader.response()[2]) == {"Allow": True}


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"POST /a HTTP/1.1\r\nContent-Length: 12", ("/a", 12, False)),
        (b"POST /a HTTP/1.1\r\ncontent-length:  0 \r\nConnection: keep-alive, Close", ("/a", 0, True)),
        (b"POST /a HTTP/1.1\r\nHost: x", None),  # no length
        (b"POST /a HTTP/1.0\r\nContent-Length: 1", None),
        (b"GET /a HTTP/1.1\r\nContent-Length: 1", None),
        (b"POST /a  HTTP/1.1\r\nContent-Length: 1", None),
        (b"POST /a HTTP/1.1\r\nContent-Length: +1", None),
        (b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked", None),
        (b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-continue", None),
        (b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n folded", None),
        (b"POST /a HTTP/1.1\r\nContent-Length : 1", None),
        (b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nConnection: Upgrade", None),
        (b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nX: a\rb", None),
        (b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nX: \xff", None),  # non-ASCII: the general parser
        (b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nX: a\tb", None),
        (b"POST /a HTTP/1.1\r\nX-Content-Length: 5\r\nContent-Length: 1", ("/a", 1, False)),
        (b"POST /a HTTP/1.1\r\nX: a\r\ncontent-LENGTH: 7\r\nConnection: close", ("/a", 7, True)),
        (b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nUpgrade: h2c", None),
        (b"POST a HTTP/1.1\r\nContent-Length: 1", None),
    ],
)
def test_fast_head_accepts_only_dockerds_shape(head: bytes, expected: tuple[str, int, bool] | None) -> None:
    assert fast_head(head) == expected
