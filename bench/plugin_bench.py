"""Decisions per second and latency at the plugin socket: our plugin vs a do-nothing stdlib plugin.

    .venv/bin/python bench/plugin_bench.py [--seconds 5] [--runs 3] [--workers 2] [--users 1000 --roles 100]
                                           [--cpu-affinity none|spread] [--soak 60]

Both servers get the same load client (bench/loadgen.py), the same payloads and the same run
(alternating, median of --runs). Our plugin runs as in production: `authzctl serve` with gunicorn,
the full developer policy, a directory of --users users and --roles roles, Ed25519 token identity
and the fsync'd audit journal on. The payload mix is built from real daemon captures: allowed and
denied container creates, lists, inspects, execs and AuthZRes calls.
Our audit shipper (a separate, niced process) copies the journal into the database in the
background: each of our runs starts with nothing left to ship, and is followed by a wait until
the last record is in the database, so that deferred work is shown (records behind, seconds to
drain, and the rate counted until then).
Last, a soak: our plugin alone at 8 connections for --soak seconds (0: none), its processes'
resident memory sampled every second: each one's peak (the kernel's high-water mark) and how
much it grew from the soak's 10th second (caches filled) to its end.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz.config import CPU_AFFINITY_MODES

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from loadgen import LoadResult, encode, run_load  # noqa: E402

CAPTURES = Path(os.environ.get("AUTHZ_CAPTURES_DIR", ROOT.parent / "shared" / "reference" / "captures"))
AUTHZCTL = str(ROOT / ".venv" / "bin" / "authzctl")
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def capture(name: str, phase: str = "authz_req") -> dict[str, Any]:
    wire: dict[str, Any] = json.loads((CAPTURES / name).read_text())[phase]["wire"]
    return wire


def with_body(wire: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    headers = {**wire.get("RequestHeaders", {}), "Content-Length": str(len(raw))}
    return {**wire, "RequestBody": base64.b64encode(raw).decode(), "RequestHeaders": headers}


def payload_label(wire: bytes) -> str:
    """``AuthZReq POST /v1.41/containers/create`` for one encoded request."""
    head, body = wire.split(b"\r\n\r\n", 1)
    phase = head.split(b" ")[1].decode().rpartition(".")[2]
    doc = json.loads(body)
    return f"{phase} {doc.get('RequestMethod')} {doc.get('RequestUri', '')}"[:49]


def print_by_payload(title: str, payloads: list[bytes], results: list[LoadResult]) -> None:
    """p50/p90/p99 per payload over ``results`` (the runs pooled): where a p99 comes from."""
    pooled: dict[int, list[float]] = {}
    for result in results:
        for index, values in result.by_payload().items():
            pooled.setdefault(index, []).extend(values)
    print(f"\n{title}")
    print(f"{'payload':<50}{'n':>7}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    for index, wire in enumerate(payloads):
        ordered = sorted(pooled.get(index, []))
        if not ordered:
            continue

        def at(q: float, values: list[float] = ordered) -> float:
            return values[min(len(values) - 1, int(q * len(values)))]

        print(f"{payload_label(wire):<50}{len(ordered):>7}{at(0.5):>9.2f}{at(0.9):>9.2f}{at(0.99):>9.2f}")


def payload_mix(token: str) -> list[bytes]:
    """(path, wire) pairs weighted like a busy CI runner: lists and inspects dominate."""

    def tok(wire: dict[str, Any]) -> dict[str, Any]:
        return {**wire, "RequestHeaders": {**wire.get("RequestHeaders", {}), "X-Authz-Token": token}}

    create = capture("run-plain__02_POST_containers-create.json")
    body = json.loads(base64.b64decode(create["RequestBody"]))
    body["User"] = "1000"
    body["HostConfig"]["Memory"] = 256 * 1024 * 1024
    body["Labels"] = {f"com.example.label{i}": "x" * 40 for i in range(60)}  # a large realistic body
    allowed_create = with_body(create, body)
    denied_create = capture("run-privileged__02_POST_containers-create.json")
    exec_name = "exec__03_POST_containers-box-exec.json"
    exec_create = capture(exec_name) if (CAPTURES / exec_name).exists() else None
    calls: list[tuple[str, dict[str, Any]]] = [
        ("AuthZReq", allowed_create),
        ("AuthZReq", denied_create),
        ("AuthZReq", capture("ps__02_GET_containers-json.json")),
        ("AuthZReq", capture("ps-a__02_GET_containers-json.json")),
        ("AuthZReq", capture("images__02_GET_images-json.json")),
        ("AuthZReq", capture("version__02_GET_version.json")),
        ("AuthZReq", capture("version__01_HEAD_ping.json")),
        ("AuthZRes", capture("ps__02_GET_containers-json.json", "authz_res")),
        ("AuthZRes", capture("version__02_GET_version.json", "authz_res")),
        ("AuthZRes", capture("run-plain__02_POST_containers-create.json", "authz_res")),
    ]
    if exec_create is not None:
        calls.append(("AuthZReq", exec_create))
    return [encode(f"/AuthZPlugin.{phase}", json.dumps(tok(wire)).encode()) for phase, wire in calls]


def wait_socket(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                run_load(str(path), [encode("/Plugin.Activate", b"")], 1, 0.05)
                return
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"{path} did not come up")


def bench_policy(users: int, roles: int) -> dict[str, Any]:
    """The developer policy plus ``roles`` team roles and ``users`` users; user ``bench`` decides."""
    doc: dict[str, Any] = {"version": 1, "roles": {}, "users": {}, "groups": {}}
    for i in range(roles):
        doc["roles"][f"team{i}"] = {
            "extends": ["developer"],
            "allow": ["container:*", "image:pull"],
            "images": {"allow": ["docker.io/library/*", f"registry.example.com/team{i}/**"]},
            "networks": {"create": [f"team{i}-*"], "use": [f"team{i}-*", "none"]},
        }
    for i in range(users):
        doc["users"][f"user{i}"] = {"roles": ["developer", f"team{i % roles}"], "tls_cn": f"user{i}.example.com"}
    doc["users"]["bench"] = {"roles": ["developer", "team0"]}
    return doc


def prepare_state(state: Path, users: int, roles: int) -> tuple[dict[str, str], str]:
    env = {**os.environ, "AUTHZ_STATE_DIR": str(state), "AUTHZ_DATABASE_URL": f"sqlite:///{state}/authz.db"}
    subprocess.run([AUTHZCTL, "init"], env=env, check=True, capture_output=True)
    doc = bench_policy(users, roles)
    policy = state / "policy.json"  # JSON is YAML: the CLI reads it
    policy.write_text(json.dumps(doc))
    subprocess.run([AUTHZCTL, "policy", "apply", str(policy)], env=env, check=True, capture_output=True)
    issued = subprocess.run([AUTHZCTL, "token", "issue", "bench", "--ttl", "8h"], env=env, check=True,
                            capture_output=True, text=True)  # fmt: skip
    token = issued.stdout.strip().splitlines()[-1]
    return env, token


class Server:
    def __init__(self, argv: list[str], socket: Path, env: dict[str, str]) -> None:
        self.socket = socket
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)  # fmt: skip
        wait_socket(socket)

    def rss_kb(self) -> list[int]:
        """Resident memory of the server's processes (master, workers, and our audit shipper)."""
        return [memory_kib(pid)[0] for pid in self.processes()]

    def processes(self) -> dict[int, str]:
        """pid -> role (master, worker, shipper) of the server's processes."""
        out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(self.proc.pid)], check=False,
                             capture_output=True, text=True)  # fmt: skip
        roles = {self.proc.pid: "master"}
        for line in out.stdout.splitlines():
            pid, _, args = line.strip().partition(" ")
            roles[int(pid)] = "shipper" if "audit_ship_process" in args else "worker"
        return roles

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=20)


def memory_kib(pid: int) -> tuple[int, int]:
    """``(resident now, resident at its highest)`` of ``pid`` in KiB (0, 0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def soak(server: Server, payloads: list[bytes], seconds: float) -> dict[str, Any]:
    """Our plugin under 8 connections for ``seconds``, its processes' memory sampled every second."""
    roles = server.processes()
    samples: list[dict[int, int]] = []
    result: list[LoadResult] = []
    load = threading.Thread(target=lambda: result.append(run_load(str(server.socket), payloads, 8, seconds)))
    load.start()
    while load.is_alive():
        samples.append({pid: memory_kib(pid)[0] for pid in roles})
        load.join(1.0)
    samples.append({pid: memory_kib(pid)[0] for pid in roles})
    settled = samples[min(10, len(samples) - 1)]
    rows = []
    for pid, role in sorted(roles.items(), key=lambda item: (item[1], item[0])):
        rows.append({"pid": pid, "role": role, "start_mib": samples[0][pid] / 1024,
                     "at_10s_mib": settled[pid] / 1024, "end_mib": samples[-1][pid] / 1024,
                     "peak_mib": memory_kib(pid)[1] / 1024,
                     "growth_after_10s_mib": (samples[-1][pid] - settled[pid]) / 1024})  # fmt: skip
    return {"seconds": seconds, "rate": result[0].rate if result else 0.0, "processes": rows}


class AuditBacklog:
    """How far the audit shipper (a separate, niced process) is behind the journal after a run.

    The shipper copies the fsync'd journal into the database in the background; under saturation
    it falls behind and catches up after the load. A rate measured over the run alone leaves that
    deferred work out, so each of our runs starts with nothing left to ship and is followed by a
    wait until the audit table stops growing: the run's figures then come with how many records
    were still to ship and how long that took.
    """

    def __init__(self, database: Path, quiet: float = 1.0, limit: float = 120.0) -> None:
        self._uri = f"file:{database}?mode=ro"
        self._quiet = quiet  # no new row for this long: everything journaled is shipped
        self._limit = limit

    def rows(self) -> int:
        with contextlib.closing(sqlite3.connect(self._uri, uri=True, timeout=5)) as db:
            return int(db.execute("SELECT coalesce(max(id), 0) FROM audit_records").fetchone()[0])

    def drain(self) -> tuple[int, float]:
        """``(rows shipped after now, seconds until the last of them was)``."""
        start = time.monotonic()
        first = last = self.rows()
        last_growth = start
        while time.monotonic() - last_growth < self._quiet and time.monotonic() - start < self._limit:
            time.sleep(0.05)
            now_rows = self.rows()
            if now_rows != last:
                last, last_growth = now_rows, time.monotonic()
        return last - first, last_growth - start


@dataclass
class Run:
    """One measured run; for our plugin also the audit records still to ship at its end."""

    load: LoadResult
    behind: int = 0
    drain_seconds: float = 0.0

    @property
    def shipped_rate(self) -> float:
        """Calls per second counted until the run's last audit record was in the database."""
        return self.load.requests / (self.load.seconds + self.drain_seconds)


def measure(server: Server, payloads: list[bytes], connections: int, seconds: float,
            backlog: AuditBacklog | None = None) -> Run:  # fmt: skip
    run_load(str(server.socket), payloads, connections, 0.5)  # warm-up: caches, connections
    if backlog is None:
        return Run(run_load(str(server.socket), payloads, connections, seconds))
    backlog.drain()  # the warm-up's and earlier runs' records: not this run's work
    load = run_load(str(server.socket), payloads, connections, seconds)
    behind, drain_seconds = backlog.drain()
    return Run(load, behind, drain_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpu-affinity", choices=CPU_AFFINITY_MODES, default="none",
                        help="passed to authzctl serve (default none, as serve's own default)")  # fmt: skip
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--roles", type=int, default=100)
    parser.add_argument("--soak", type=float, default=60.0, help="seconds of the memory soak at the end (0: none)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="authz-bench-"))
    try:
        env, token = prepare_state(tmp / "state", args.users, args.roles)
        payloads = payload_mix(token)
        serve = [AUTHZCTL, "serve", "--socket", str(tmp / "authz.sock"), "--workers", str(args.workers),
                 "--cpu-affinity", args.cpu_affinity]  # fmt: skip
        ours = Server(serve, tmp / "authz.sock", env)
        null = Server([PYTHON, str(HERE / "null_plugin.py"), str(tmp / "null.sock")], tmp / "null.sock", env)
        backlog = AuditBacklog(tmp / "state" / "authz.db")
        rows: dict[str, dict[int, list[Run]]] = {"ours": {1: [], 8: []}, "null": {1: [], 8: []}}
        # At start: once the master, its workers and the audit shipper (started 1 s after the
        # master) are all up.
        deadline = time.monotonic() + 10
        while len(ours.rss_kb()) < args.workers + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        rss_start = sum(ours.rss_kb())
        for _ in range(args.runs):
            for connections in (1, 8):
                for name, server in (("null", null), ("ours", ours)):
                    watch = backlog if server is ours else None
                    rows[name][connections].append(measure(server, payloads, connections, args.seconds, watch))
        rss_end = ours.rss_kb()
        null.stop()
        soaked = soak(ours, payloads, args.soak) if args.soak > 0 else None
        ours.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(results: list[Run], key: str) -> float:
        return statistics.median(getattr(r.load, key) if key != "p99" else r.load.percentile(99) for r in results)

    figures: dict[str, Any] = {"workers": args.workers, "cpu_affinity": args.cpu_affinity, "users": args.users,
                               "roles": args.roles}  # fmt: skip
    print(f"\nplugin socket, {len(payloads)}-payload mix, median of {args.runs} runs of {args.seconds:g}s"
          f" (ours: {args.workers} workers, --cpu-affinity {args.cpu_affinity})")  # fmt: skip
    print(f"{'server':<28}{'conns':>6}{'decisions/s':>14}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'client µs/call':>16}")
    for connections in (1, 8):
        for name, label in (("null", "stdlib do-nothing"), ("ours", "authz (developer policy)")):
            res = rows[name][connections]
            rate, p50, p99 = med(res, "rate"), med(res, "p50"), med(res, "p99")
            client = med(res, "client_us_per_call")  # the load client's own CPU: it shares the machine
            errors = sum(r.load.errors for r in res)
            figures[f"{name}_{connections}"] = {"rate": rate, "p50_ms": p50, "p99_ms": p99, "errors": errors,
                                                "client_us_per_call": client}  # fmt: skip
            print(f"{label:<28}{connections:>6}{rate:>14,.0f}{p50:>9.2f}{p99:>9.2f}{errors:>8}{client:>16.0f}")
        ratio = figures[f"ours_{connections}"]["rate"] / figures[f"null_{connections}"]["rate"]
        figures[f"ratio_{connections}"] = ratio
        print(f"{'ratio ours / do-nothing':<28}{connections:>6}{ratio:>14.2f}")
    print("\naudit shipped to the database: records still to ship when each of our runs ended, how long they took,")
    print("and the rate counted until the run's last record was in the database (the do-nothing plugin keeps none)")
    print(f"{'conns':>6}{'records behind':>28}{'drained after s':>22}{'rate, shipped':>16}{'ratio, shipped':>16}")
    for connections in (1, 8):
        ours_runs = rows["ours"][connections]
        shipped = statistics.median(r.shipped_rate for r in ours_runs)
        shipped_ratio = shipped / figures[f"null_{connections}"]["rate"]
        figures[f"ours_{connections}"].update(
            behind=[r.behind for r in ours_runs], drain_seconds=[round(r.drain_seconds, 2) for r in ours_runs],
            shipped_rate=shipped)  # fmt: skip
        figures[f"ratio_shipped_{connections}"] = shipped_ratio
        behind = " / ".join(f"{r.behind:,}" for r in ours_runs)
        drained = " / ".join(f"{r.drain_seconds:.2f}" for r in ours_runs)
        print(f"{connections:>6}{behind:>28}{drained:>22}{shipped:>16,.0f}{shipped_ratio:>16.2f}")
    print_by_payload("ours at 1 connection, per payload (all runs pooled)", payloads, [r.load for r in rows["ours"][1]])
    print(f"\nresident memory: {rss_start / 1024:.1f} MiB at start, {sum(rss_end) / 1024:.1f} MiB at end "
          f"(per process: {', '.join(f'{kb / 1024:.1f}' for kb in rss_end)} MiB)")  # fmt: skip
    if soaked is not None:
        figures["soak"] = soaked
        print(f"\nsoak: ours alone at 8 connections for {args.soak:g} s ({soaked['rate']:,.0f} decisions/s),"
              " resident memory per process, MiB")  # fmt: skip
        print(f"{'process':<16}{'start':>8}{'at 10 s':>9}{'end':>8}{'peak':>8}{'growth after 10 s':>20}")
        for row in soaked["processes"]:
            print(f"{row['role'] + ' ' + str(row['pid']):<16}{row['start_mib']:>8.1f}{row['at_10s_mib']:>9.1f}"
                  f"{row['end_mib']:>8.1f}{row['peak_mib']:>8.1f}{row['growth_after_10s_mib']:>+20.1f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
