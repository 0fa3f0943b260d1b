"""Added latency of the peer-credential gateway: direct TLS vs through the gateway.

Starts a private dockerd (``--tlsverify`` on a free loopback port, no authz plugin) and
``authzctl gateway serve`` in front of it, then measures ``GET /containers/json``:

1. N requests over ONE keep-alive connection each way (stdlib ``http.client``: TLS over TCP
   with a client certificate for the direct path, plain HTTP over AF_UNIX for the gateway);
2. M requests with a NEW connection each (the gateway's per-connection work: SO_PEERCRED,
   user lookup, TCP connect and TLS handshake to the daemon);
3. K runs of the real ``docker ps`` each way (what a user waits for).

Run as root from the repository root (needs dockerd):

    .venv/bin/python bench/gateway_latency.py [--n 200] [--connections 50] [--cli 20]

Everything it starts is stopped by PID and its directory removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))  # the e2e harness starts private daemons

from harness import DockerDaemon, authzctl_bin, clean_env  # noqa: E402
from hostutil import UnixHTTPConnection  # noqa: E402

from authz.gateway.ca import CertificateAuthority  # noqa: E402
from authz.gateway.proxy import ClientContexts  # noqa: E402

PATH = "/v1.41/containers/json"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _summary(label: str, samples: list[float]) -> dict[str, float | str | int]:
    ordered = sorted(samples)
    p99 = ordered[max(0, -(-99 * len(ordered) // 100) - 1)]  # nearest rank
    return {
        "label": label,
        "n": len(samples),
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(p99 * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


def _timed(conn_factory: Callable[[], http.client.HTTPConnection], n: int, reuse: bool) -> list[float]:
    """``n`` GETs; one connection for all (``reuse``) or a fresh one per request."""
    samples = []
    conn = conn_factory()
    try:
        for _ in range(10):  # warm-up: caches, the daemon's first-request work
            conn.request("GET", PATH)
            conn.getresponse().read()
        for _ in range(n):
            if not reuse:
                conn.close()
                conn = conn_factory()
            start = time.perf_counter()
            conn.request("GET", PATH)
            response = conn.getresponse()
            response.read()
            samples.append(time.perf_counter() - start)
            if response.status != 200:
                raise RuntimeError(f"GET {PATH} answered {response.status}")
    finally:
        conn.close()
    return samples


def _timed_cli(argv: list[str], env: dict[str, str], n: int) -> list[float]:
    samples = []
    for _ in range(n + 2):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True, timeout=60)
        samples.append(time.perf_counter() - start)
    return samples[2:]  # the first runs fill the page cache


def run(n: int, connections: int, cli: int) -> list[dict[str, float | str | int]]:
    workdir = Path(tempfile.mkdtemp(prefix="agw-bench-", dir="/tmp"))
    gateway: subprocess.Popen[bytes] | None = None
    daemon: DockerDaemon | None = None
    try:
        certs = workdir / "certs"
        subprocess.run([authzctl_bin(), "gateway", "setup", "--dir", str(certs)], check=True,
                       capture_output=True, env=clean_env())  # fmt: skip
        port = _free_port()
        tls = (f"--host=tcp://127.0.0.1:{port}", "--tlsverify", f"--tlscacert={certs / 'ca.pem'}",
               f"--tlscert={certs / 'server.pem'}", f"--tlskey={certs / 'server-key.pem'}")  # fmt: skip
        daemon = DockerDaemon(workdir / "d", extra_args=tls).start()
        sock = workdir / "gw.sock"
        gateway = subprocess.Popen(
            [authzctl_bin(), "gateway", "serve", "--listen", str(sock), "--daemon", f"tcp://127.0.0.1:{port}",
             "--dir", str(certs)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env({"AUTHZ_LOG_LEVEL": "WARNING"}),
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not sock.exists():
            if gateway.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.05)

        context = ClientContexts(CertificateAuthority.load(certs)).context_for("bench")

        def direct() -> http.client.HTTPConnection:
            return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)

        def via_gateway() -> http.client.HTTPConnection:
            conn: http.client.HTTPConnection = UnixHTTPConnection(str(sock), timeout=30)
            return conn

        results = [
            _summary("direct TLS, keep-alive", _timed(direct, n, reuse=True)),
            _summary("gateway, keep-alive", _timed(via_gateway, n, reuse=True)),
            _summary("direct TLS, new connection each", _timed(direct, connections, reuse=False)),
            _summary("gateway, new connection each", _timed(via_gateway, connections, reuse=False)),
        ]
        if cli:
            bundle = workdir / "bench-client"
            subprocess.run([authzctl_bin(), "gateway", "issue-client-cert", "bench", "--dir", str(certs),
                            "--out", str(bundle), "--days", "1"], check=True, capture_output=True,
                           env=clean_env())  # fmt: skip
            config = workdir / "docker-config"
            config.mkdir()
            tls_env = clean_env({"DOCKER_CERT_PATH": str(bundle), "DOCKER_TLS_VERIFY": "1",
                                 "DOCKER_CONFIG": str(config)})  # fmt: skip
            plain_env = clean_env({"DOCKER_CONFIG": str(config)})
            docker = shutil.which("docker") or "docker"
            direct_cli = [docker, "-H", f"tcp://127.0.0.1:{port}", "ps"]
            gateway_cli = [docker, "-H", f"unix://{sock}", "ps"]
            results.append(_summary("docker ps, direct TLS", _timed_cli(direct_cli, tls_env, cli)))
            results.append(_summary("docker ps, gateway", _timed_cli(gateway_cli, plain_env, cli)))
        return results
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(10)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait(10)
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="keep-alive requests each way (default 200)")
    parser.add_argument("--connections", type=int, default=50, help="new-connection requests each way")
    parser.add_argument("--cli", type=int, default=20, help="docker ps runs each way (0: skip)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("gateway_latency: needs root (it starts a private dockerd)", file=sys.stderr)
        return 2
    results = run(args.n, args.connections, args.cli)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'GET /containers/json':36} {'n':>4} {'median ms':>10} {'p99 ms':>8} {'mean ms':>8}")
    for row in results:
        print(f"{row['label']!s:36} {row['n']:>4} {row['median_ms']:>10} {row['p99_ms']:>8} {row['mean_ms']:>8}")
    pairs = [(0, 1), (2, 3)] + ([(4, 5)] if len(results) > 4 else [])
    for a, b in pairs:
        added = float(results[b]["median_ms"]) - float(results[a]["median_ms"])
        print(f"added by the gateway ({results[b]['label']}): median {added:+.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
