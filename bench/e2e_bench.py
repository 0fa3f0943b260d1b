"""The time the plugin adds to real dockerd API calls, against no plugin and a do-nothing plugin.

    .venv/bin/python bench/e2e_bench.py [--n 200] [--runs 3]

Three private dockerds run side by side (same machine, same image, same client): without an
authz plugin, with the do-nothing stdlib plugin (bench/null_plugin.py), and with our plugin
(`authzctl serve`, developer policy, token identity, audit on). It times, over the unix socket
with one keep-alive connection per daemon: `GET /containers/json`, container create + delete, and
exec create + start (detached) in a running container, the daemons taking turns call by call.
Added time = median with a plugin − median without (over all runs' calls); the figure that
matters is ours / do-nothing.

A container create+rm (10-20 ms) or exec (40-55 ms) varies by several ms from one call to the
next, more than either plugin adds: those calls are sampled ``--others`` times
per run (default n/2), and each ratio comes with a 90 % bootstrap interval over all its samples,
which says how far the noise alone could move it. The daemons keep their data and exec roots on
a tmpfs (``--daemon-dir``, default /dev/shm): their calls then wait on no disk, whose latency on
a shared VM varied a create+rm by tens of ms. The plugins' state (our policy database and audit
journal) stays on disk under /tmp, as in production.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))
from harness import DockerDaemon, PluginServer, PluginSpec, import_tiny  # noqa: E402
from hostutil import UnixHTTPConnection  # noqa: E402
from plugin_bench import PYTHON, Server, prepare_state  # noqa: E402

CREATE = {"Image": "tiny", "Cmd": ["true"], "User": "1000", "HostConfig": {"NetworkMode": "none"}}
SLEEPER = {"Image": "tiny", "Cmd": ["sleep", "3600"], "User": "1000", "HostConfig": {"NetworkMode": "none"}}


class Client:
    def __init__(self, socket: Path, token: str) -> None:
        self.conn = UnixHTTPConnection(str(socket))
        self.headers = {"X-Authz-Token": token, "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: object | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else b""
        headers = dict(self.headers, **{"Content-Length": str(len(data))})
        self.conn.request(method, f"/v1.41{path}", body=data, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()


class Workload:
    """The timed calls against one daemon (a sleeping container to exec in is created first)."""

    def __init__(self, daemon: DockerDaemon, token: str) -> None:
        self.client = Client(daemon.socket, token)
        status, body = self.client.call("POST", "/containers/create", SLEEPER)
        assert status == 201, body
        self.sleeper = json.loads(body)["Id"]
        status, body = self.client.call("POST", f"/containers/{self.sleeper}/start")
        assert status == 204, body

    def ps(self) -> None:
        status, body = self.client.call("GET", "/containers/json")
        assert status == 200, body

    def create_rm(self) -> None:
        status, body = self.client.call("POST", "/containers/create", CREATE)
        assert status == 201, body
        status, body = self.client.call("DELETE", f"/containers/{json.loads(body)['Id']}")
        assert status == 204, body

    def exec_start(self) -> None:
        status, body = self.client.call("POST", f"/containers/{self.sleeper}/exec", {"Cmd": ["true"], "User": "1000"})
        assert status == 201, body
        status, body = self.client.call("POST", f"/exec/{json.loads(body)['Id']}/start", {"Detach": True})
        assert status == 200, body

    def close(self) -> None:
        self.client.call("DELETE", f"/containers/{self.sleeper}?force=1")


OPERATIONS = {"ps": Workload.ps, "create+rm": Workload.create_rm, "exec": Workload.exec_start}


def interleaved(workloads: dict[str, Workload], operation: str, n: int) -> dict[str, list[float]]:
    """ms of each call of ``operation`` on each daemon, the daemons taking turns call by call (the
    order rotating), so that the machine's drift (2x within minutes on this VM) hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in workloads}
    names = list(workloads)
    call = OPERATIONS[operation]
    for index in range(n):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            started = time.perf_counter()
            call(workloads[name])
            samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def medians(samples: dict[str, list[float]]) -> tuple[float, float, float]:
    """The median ms with no plugin, the do-nothing plugin and ours."""
    base, empty, mine = (statistics.median(samples[k]) for k in ("none", "null", "ours"))
    return base, empty, mine


def added_ratio(samples: dict[str, list[float]]) -> float:
    """(ours − none) / (do-nothing − none) of the medians; NaN when the do-nothing plugin added nothing."""
    base, empty, mine = medians(samples)
    return (mine - base) / (empty - base) if empty > base else float("nan")


def bootstrap_interval(samples: dict[str, list[float]], rounds: int = 1000, seed: int = 5) -> tuple[float, float]:
    """The 5th and 95th percentiles of ``added_ratio`` over resamplings of each daemon's calls
    (NaN draws, where the do-nothing plugin's share vanished in the noise, count as infinite)."""
    rng = random.Random(seed)
    draws = []
    for _ in range(rounds):
        ratio = added_ratio({k: rng.choices(v, k=len(v)) for k, v in samples.items()})
        draws.append(math.inf if math.isnan(ratio) else ratio)
    draws.sort()
    return draws[int(rounds * 0.05)], draws[int(rounds * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--others", type=int, help="create+rm and exec calls per run (default: n/2, at least 10)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--daemon-dir", type=Path, default=Path("/dev/shm"),
                        help="where the daemons' roots go (a tmpfs by default; /tmp for the disk)")  # fmt: skip
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="authz-e2eb-", dir="/tmp"))
    daemons = Path(tempfile.mkdtemp(prefix="authz-e2eb-", dir=args.daemon_dir))
    env, token = prepare_state(work / "state", 1000, 100)
    others = args.others or max(10, args.n // 2)
    counts = {"ps": args.n, "create+rm": others, "exec": others}
    pooled: dict[str, dict[str, list[float]]] = {op: {"none": [], "null": [], "ours": []} for op in OPERATIONS}
    ours = PluginServer(work / "ours", env, workers=2).start()
    null = Server([PYTHON, str(HERE / "null_plugin.py"), str(work / "null.sock")], work / "null.sock", env)
    try:
        with contextlib.ExitStack() as stack:
            ours_spec = stack.enter_context(PluginSpec(ours.socket, prefix="authz-bench"))
            null_spec = stack.enter_context(PluginSpec(work / "null.sock", prefix="authz-bench"))
            workloads: dict[str, Workload] = {}
            for name, plugin in {"none": None, "null": null_spec.name, "ours": ours_spec.name}.items():
                daemon = stack.enter_context(DockerDaemon(daemons / f"d-{name}", plugin))
                import_tiny(daemon, _admin_config(env, work))
                workloads[name] = Workload(daemon, token)
                stack.callback(workloads[name].close)
            for operation in OPERATIONS:  # warm-up: connections, caches, first container
                interleaved(workloads, operation, 2)
            for _ in range(args.runs):
                for operation, n in counts.items():
                    samples = interleaved(workloads, operation, n)
                    for name, values in samples.items():
                        pooled[operation][name].extend(values)
    finally:
        null.stop()
        ours.stop()
        shutil.rmtree(work, ignore_errors=True)  # the daemons are stopped and their mounts gone
        shutil.rmtree(daemons, ignore_errors=True)
    table: dict[str, dict[str, Any]] = {}
    print(f"\nreal dockerds taking turns call by call, medians of {args.runs} runs' calls "
          f"(ms per API call; n={args.n} ps, {others} others per run)")  # fmt: skip
    print(f"{'call':<12}{'no plugin':>11}{'do-nothing':>12}{'ours':>9}{'added: do-nothing':>19}{'ours':>8}{'ratio':>8}"
          f"{'90% interval':>16}")  # fmt: skip
    for op in OPERATIONS:
        # Medians of all the runs' calls together: the same samples the interval resamples.
        base, empty, mine = medians(pooled[op])
        ratio = added_ratio(pooled[op])
        low, high = bootstrap_interval(pooled[op])
        table[op] = {"none": base, "null": empty, "ours": mine, "ratio": ratio, "interval": [low, high]}
        print(f"{op:<12}{base:>11.2f}{empty:>12.2f}{mine:>9.2f}{empty - base:>19.2f}{mine - base:>8.2f}{ratio:>8.2f}"
              f"{f'{low:.2f}-{high:.2f}':>16}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


def _admin_config(env: dict[str, str], work: Path) -> Path:
    """A DOCKER_CONFIG with an admin token (the import needs image:import)."""
    import subprocess

    target = work / "admin-config"
    if not (target / "config.json").exists():
        authzctl = str(HERE.parent / ".venv" / "bin" / "authzctl")
        subprocess.run([authzctl, "user", "add", "benchadmin", "--role", "admin"], env=env, check=False,
                       capture_output=True)  # fmt: skip
        subprocess.run([authzctl, "token", "issue", "benchadmin", "--docker-config", str(target)], env=env,
                       check=True, capture_output=True)  # fmt: skip
    return target


if __name__ == "__main__":
    main()
