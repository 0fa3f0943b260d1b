"""The time the plugin adds to real dockerd API calls, against no plugin and a do-nothing plugin.

    .venv/bin/python bench/e2e_bench.py [--n 200] [--runs 3]

Three private dockerds run side by side (same machine, same image, same client): without an
authz plugin, with the do-nothing stdlib plugin (bench/null_plugin.py), and with our plugin
(`authzctl serve`, developer policy, token identity, audit on). It times, over the unix socket
with one keep-alive connection per daemon: `GET /containers/json`, container create + delete, and
exec create + start (detached) in a running container, the daemons taking turns call by call.
Added time = median with a plugin − median without; the figure that matters is ours / do-nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

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


def interleaved(workloads: dict[str, Workload], operation: str, n: int) -> dict[str, float]:
    """Median ms of ``operation`` on each daemon, the daemons taking turns call by call (the
    order rotating), so that the machine's drift (2x within minutes on this VM) hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in workloads}
    names = list(workloads)
    call = OPERATIONS[operation]
    for index in range(n):
        for name in names[index % len(names):] + names[: index % len(names)]:
            started = time.perf_counter()
            call(workloads[name])
            samples[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="authz-e2eb-", dir="/tmp"))
    env, token = prepare_state(work / "state", 1000, 100)
    counts = {"ps": args.n, "create+rm": max(10, args.n // 5), "exec": max(10, args.n // 5)}
    results: dict[str, list[dict[str, float]]] = {op: [] for op in OPERATIONS}
    ours = PluginServer(work / "ours", env, workers=2).start()
    null = Server([PYTHON, str(HERE / "null_plugin.py"), str(work / "null.sock")], work / "null.sock", env)
    try:
        with contextlib.ExitStack() as stack:
            ours_spec = stack.enter_context(PluginSpec(ours.socket, prefix="authz-bench"))
            null_spec = stack.enter_context(PluginSpec(work / "null.sock", prefix="authz-bench"))
            workloads: dict[str, Workload] = {}
            for name, plugin in {"none": None, "null": null_spec.name, "ours": ours_spec.name}.items():
                daemon = stack.enter_context(DockerDaemon(work / f"d-{name}", plugin))
                import_tiny(daemon, _admin_config(env, work))
                workloads[name] = Workload(daemon, token)
                stack.callback(workloads[name].close)
            for operation in OPERATIONS:  # warm-up: connections, caches, first container
                interleaved(workloads, operation, 2)
            for _ in range(args.runs):
                for operation, n in counts.items():
                    results[operation].append(interleaved(workloads, operation, n))
    finally:
        null.stop()
        ours.stop()
        shutil.rmtree(work, ignore_errors=True)  # the daemons are stopped and their mounts gone
    table: dict[str, dict[str, float]] = {}
    print(f"\nreal dockerds taking turns call by call, median of {args.runs} runs "
          f"(ms per API call; n={args.n} ps, {counts['exec']} others)")  # fmt: skip
    print(f"{'call':<12}{'no plugin':>11}{'do-nothing':>12}{'ours':>9}{'added: do-nothing':>19}{'ours':>8}{'ratio':>8}")
    for op in OPERATIONS:
        base, empty, mine = (statistics.median(r[k] for r in results[op]) for k in ("none", "null", "ours"))
        ratio = (mine - base) / (empty - base) if empty > base else float("nan")
        table[op] = {"none": base, "null": empty, "ours": mine, "ratio": ratio}
        print(f"{op:<12}{base:>11.2f}{empty:>12.2f}{mine:>9.2f}{empty - base:>19.2f}{mine - base:>8.2f}{ratio:>8.2f}")
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
