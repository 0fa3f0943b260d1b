"""``authzctl serve`` ships the audit journal from one process beside the workers.

A real gunicorn master, real workers and the real shipper child: records reach the store while
the workers live, a killed shipper is replaced by the master, stopping the server drains every
journal and leaves no process behind, and a shipper outlives no master.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authz.audit_journal import list_segments

AUTHZCTL = Path(sys.executable).parent / "authzctl"
PING = json.dumps({"RequestMethod": "GET", "RequestUri": "/_ping", "User": ""}).encode()


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    state: Path
    socket: Path
    log: Path

    @property
    def journal(self) -> Path:
        return self.state / "audit-journal"


def children(pid: int) -> dict[int, str]:
    """Live children of ``pid``: their command lines."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def shipper_of(server: Server) -> int | None:
    pids = [pid for pid, cmd in children(server.process.pid).items() if "authz.audit_ship_process" in cmd]
    assert len(pids) <= 1, pids
    return pids[0] if pids else None


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def niceness(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])  # field 19 of proc(5)


def wait_for(what: str, check: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def decide(server: Server, count: int) -> None:
    """``count`` AuthZReq calls on one keep-alive connection, as dockerd sends them."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(server.socket))
        head = f"POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nHost: plugin\r\nContent-Length: {len(PING)}\r\n\r\n"
        for _ in range(count):
            sock.sendall(head.encode() + PING)
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, "the plugin closed the connection"
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200"), reply


def stored(server: Server) -> dict[str, list[int]]:
    """Seqs of every chain in the store, in order."""
    with sqlite3.connect(server.state / "authz.db", timeout=10) as db:
        rows = db.execute("SELECT chain, seq FROM audit_records ORDER BY chain, seq").fetchall()
    chains: dict[str, list[int]] = {}
    for chain, seq in rows:
        chains.setdefault(chain, []).append(seq)
    return chains


def total(server: Server) -> int:
    return sum(len(seqs) for seqs in stored(server).values())


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """``authzctl serve --workers 2``, plus the arguments the test passes as its parameter."""
    extra = list(getattr(request, "param", ()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    env.update(AUTHZ_STATE_DIR=str(tmp_path / "state"), AUTHZ_NODE="ship-test")
    subprocess.run([AUTHZCTL, "init"], env=env, check=True, capture_output=True, timeout=120)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [AUTHZCTL, "serve", "--socket", str(tmp_path / "p.sock"), "--workers", "2", *extra],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    started = Server(process, tmp_path / "state", tmp_path / "p.sock", log)
    family: set[int] = set()
    try:
        wait_for("the plugin socket", lambda: started.socket.exists() or process.poll() is not None)
        assert process.poll() is None, log.read_text()
        wait_for("two workers and the shipper", lambda: len(children(process.pid)) == 3)
        family.update(children(process.pid))
        yield started
    finally:
        family.update(children(process.pid))
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for pid in family:  # a failed test must not leave a worker or a shipper running
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_shipper_process_ships_live_workers_and_drains_them_at_stop(server: Server) -> None:
    shipper = shipper_of(server)
    assert shipper is not None
    wait_for("the shipper at nice 10", lambda: niceness(shipper) == 10, timeout=20)
    # without --cpu-affinity nothing is pinned: every process may run on every CPU the server may
    assert {pid: os.sched_getaffinity(pid) for pid in children(server.process.pid)} == dict.fromkeys(
        children(server.process.pid), os.sched_getaffinity(0))  # fmt: skip

    decide(server, 30)
    wait_for("30 records in the store while the workers live", lambda: total(server) == 30)
    status = json.loads((server.journal / "shipper.json").read_text())
    assert status["pid"] == shipper
    live = set(list_segments(server.journal))
    assert live, "a live worker's journal is never removed"
    assert live <= set(stored(server))

    os.kill(shipper, signal.SIGKILL)
    replaced = wait_for("a new shipper", lambda: (pid := shipper_of(server)) not in (None, shipper) and pid)
    assert f"audit shipper (pid {shipper}) has exited (killed by SIGKILL); restarting it" in server.log.read_text()
    decide(server, 10)
    wait_for("the 10 records after the restart", lambda: total(server) == 40)

    workers = set(children(server.process.pid)) - {replaced}
    server.process.terminate()
    assert server.process.wait(30) == 0
    assert not any(alive(pid) for pid in (*workers, replaced)), "a process outlived the server"
    assert list_segments(server.journal) == {}, "stopping the server drains and removes every journal"
    assert not list(server.journal.glob("*.lock"))
    chains = stored(server)
    assert sum(map(len, chains.values())) == 40
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in chains.values()), chains


@pytest.mark.parametrize("server", [("--cpu-affinity", "spread")], indirect=True)
def test_spread_pins_each_worker_to_its_own_cpu_and_a_respawn_takes_the_freed_one(server: Server) -> None:
    allowed = os.sched_getaffinity(0)
    shipper = shipper_of(server)
    assert shipper is not None
    workers = {pid: os.sched_getaffinity(pid) for pid in children(server.process.pid) if pid != shipper}
    assert os.sched_getaffinity(shipper) == allowed  # the shipper is never pinned
    if len(allowed) < 2:  # nothing to spread over: nothing pinned
        assert set(map(frozenset, workers.values())) == {frozenset(allowed)}
        return
    assert all(len(cpus) == 1 and cpus <= allowed for cpus in workers.values()), workers
    assert len({frozenset(cpus) for cpus in workers.values()}) == 2, "two workers on one CPU"
    assert "pinned to CPU" in server.log.read_text()

    victim = max(workers, key=lambda pid: min(workers[pid]))  # not the lowest CPU: a respawn must not
    freed = workers[victim]  # simply take the first one
    os.kill(victim, signal.SIGKILL)
    respawned = wait_for(
        "a new worker",
        lambda: next((pid for pid in children(server.process.pid) if pid not in (*workers, shipper)), None),
    )
    assert os.sched_getaffinity(respawned) == freed  # the CPU no live worker holds, not the first one
    decide(server, 4)
    wait_for("the 4 records", lambda: total(server) == 4)


def test_a_shipper_does_not_outlive_its_master(server: Server) -> None:
    shipper = shipper_of(server)
    assert shipper is not None
    decide(server, 5)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    wait_for("the shipper to exit with its master", lambda: not alive(shipper), timeout=20)
