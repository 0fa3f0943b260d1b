"""Thread CPU of the plugin calls of a container create+rm, an exec and an inspect, warm and cold, by stage.

    .venv/bin/python bench/cold_calls.py [--calls 60] [--pollute-mib 32] [--sleep-ms 3]

Through dockerd (bench/e2e_bench.py) our four calls of a create+rm come 3-10 ms apart, and the
daemon's own work in between (a create copies the image's files on `vfs`) leaves little of the
plugin in the CPU caches. Here the same calls, with the e2e benchmark's bodies and token, go to
the protocol handlers of a plugin app built as a worker builds it (no HTTP), once back to back
("warm") and once with ``--pollute-mib`` of memory written and ``--sleep-ms`` slept before each
call ("cold"). Printed: the median thread CPU of each call and of its stages. The cold figures
come close to those timed inside real workers under the e2e benchmark (BENCHMARKS.md, section 2),
so this is the figure a change aimed at the dockerd ratios can be compared by, run before and
after it.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import collections
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import authz.decide
import authz.server
from authz.composition import build_plugin_app
from authz.config import Config

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from e2e_bench import CREATE  # noqa: E402
from plugin_bench import capture, prepare_state, with_body  # noqa: E402

REQ, RES = "/AuthZPlugin.AuthZReq", "/AuthZPlugin.AuthZRes"
EXEC = {"Cmd": ["true"], "User": "1000"}
# (module, attribute, stage): what each call's thread CPU is split into.
STAGES = [
    (authz.server, "parse_request", "parse"),
    (authz.server, "decode_document", "parse"),
    (authz.server, "request_from_document", "parse"),
    (authz.decide, "classify", "classify"),
    (authz.decide.Authorizer, "_identify", "identify"),
    (authz.decide, "evaluate", "evaluate"),
    (authz.decide.Authorizer, "_update_ownership", "ownership"),
    (authz.decide.Authorizer, "_write_record", "audit record"),
]
spent: collections.Counter[str] = collections.Counter()


def timed(stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time_ns()
        try:
            return function(*args, **kwargs)
        finally:
            spent[stage] += time.thread_time_ns() - started

    return wrapper


Call = tuple[str, str, bytes]  # (operation, protocol path, wire body)


def sequences(token: str, sleeper: str) -> tuple[Call, Callable[[int], list[Call]]]:
    """The AuthZRes that records ``sleeper`` (the container the execs run in), and the plugin calls
    of one create+rm and one exec (IDs vary per round, as the daemon's do)."""
    headers = {"Content-Type": "application/json", "X-Authz-Token": token}

    def wire(template: dict[str, Any], **fields: Any) -> bytes:
        return json.dumps({**template, "RequestHeaders": headers, **fields}).encode()

    def response_body(value: dict[str, Any]) -> str:
        return base64.b64encode(json.dumps(value).encode()).decode()

    create_req = with_body(capture("run-plain__02_POST_containers-create.json"), CREATE)
    create_res = with_body(capture("run-plain__02_POST_containers-create.json", "authz_res"), CREATE)
    delete_req = capture("rm-created-2__02_DELETE_containers-box5.json")
    delete_res = capture("rm-created-2__02_DELETE_containers-box5.json", "authz_res")
    exec_req = with_body(capture("exec-detach-run2__03_POST_containers-box4-exec.json"), EXEC)
    exec_res = with_body(capture("exec-detach-run2__03_POST_containers-box4-exec.json", "authz_res"), EXEC)
    start = "exec-detach-run2__04_POST_exec-d058b533232d37440c9bd8a62ea8e4312513a036213892b3e9d632e.json"
    start_req, start_res = capture(start), capture(start, "authz_res")
    inspect = "inspect__02_GET_containers-box-json.json"
    inspect_req, inspect_res = capture(inspect), capture(inspect, "authz_res")
    answer = json.loads(base64.b64decode(inspect_res["ResponseBody"]))  # the captured container's details
    inspected = response_body({**answer, "Id": sleeper})

    def calls(round_: int) -> list[Call]:
        container, exec_id = f"{round_:064x}", f"{round_ + 1_000_000:064x}"
        on_exec = f"/v1.41/containers/{sleeper}/exec"
        created, exec_made = response_body({"Id": container, "Warnings": []}), response_body({"Id": exec_id})
        return [
            ("create+rm", REQ, wire(create_req)),
            ("create+rm", RES, wire(create_res, ResponseStatusCode=201, ResponseBody=created)),
            ("create+rm", REQ, wire(delete_req, RequestUri=f"/v1.41/containers/{container}")),
            ("create+rm", RES, wire(delete_res, RequestUri=f"/v1.41/containers/{container}")),
            ("exec", REQ, wire(exec_req, RequestUri=on_exec)),
            ("exec", RES, wire(exec_res, RequestUri=on_exec, ResponseStatusCode=201, ResponseBody=exec_made)),
            ("exec", REQ, wire(start_req, RequestUri=f"/v1.41/exec/{exec_id}/start")),
            ("exec", RES, wire(start_res, RequestUri=f"/v1.41/exec/{exec_id}/start")),
            # What the CLI's `docker exec` and `docker inspect` send first; the answer is judged (AuthZRes).
            ("inspect", REQ, wire(inspect_req, RequestUri=f"/v1.41/containers/{sleeper}/json")),
            ("inspect", RES, wire(inspect_res, RequestUri=f"/v1.41/containers/{sleeper}/json", ResponseBody=inspected)),
        ]

    sleeper_created = (
        "setup",
        RES,
        wire(create_res, ResponseStatusCode=201, ResponseBody=response_body({"Id": sleeper})),
    )
    return sleeper_created, calls


def label(operation: str, path: str, body: bytes) -> str:
    request = json.loads(body)
    phase = "AuthZReq" if path == REQ else "AuthZRes"
    return f"{operation:<10}{phase} {request['RequestMethod']} {request['RequestUri'][:26]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=60, help="rounds of each sequence, warm and cold")
    parser.add_argument("--pollute-mib", type=int, default=32, help="memory written before each cold call")
    parser.add_argument("--sleep-ms", type=float, default=3.0, help="sleep before each cold call")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="authz-cold-bench-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # after the app's own exit hooks
    env, token = prepare_state(tmp / "state", 1000, 100)
    os.environ.update(env)
    for owner, attribute, stage in STAGES:
        setattr(owner, attribute, timed(stage, getattr(owner, attribute)))
    app = build_plugin_app(Config.from_env(), ship_in_process=False)
    routes = app.extensions["authz.protocol_routes"]
    (_, path, body), calls = sequences(token, "5" * 64)
    routes[path](body)  # the sleeper's owner: the exec calls act on it
    junk = bytearray(args.pollute_mib << 20)

    def run(round_: int, cold: bool) -> list[tuple[str, int, dict[str, int]]]:
        out = []
        for operation, path, body in calls(round_):
            if cold:
                for offset in range(0, len(junk), 64):  # one write per cache line
                    junk[offset] = round_ & 0xFF
                time.sleep(args.sleep_ms / 1000)
            spent.clear()
            started = time.thread_time_ns()
            reply = routes[path](body)
            total = time.thread_time_ns() - started
            if b'"Allow":true' not in reply.replace(b" ", b""):
                raise SystemExit(f"not allowed: {label(operation, path, body)}: {reply!r}")
            out.append((label(operation, path, body), total, dict(spent)))
        return out

    for round_ in range(100):  # warm-up: caches, first policy compile
        run(round_, cold=False)
    gc.collect()
    gc.freeze()  # as the workers do after start
    stages = list(dict.fromkeys(stage for _, _, stage in STAGES))
    print(f"median thread CPU per call, µs ({args.calls} rounds; cold: {args.pollute_mib} MiB written and "
          f"{args.sleep_ms:g} ms slept before each call)")  # fmt: skip
    print(f"{'':<52}{'warm':>7}{'cold':>7}  cold by stage: " + ", ".join(stages))
    results = {cold: [run(1000 * (2 + cold) + round_, cold) for round_ in range(args.calls)] for cold in (False, True)}
    sums: dict[tuple[str, bool], float] = collections.defaultdict(float)
    for index, (name, _, _) in enumerate(results[False][0]):
        medians = {cold: statistics.median(r[index][1] for r in results[cold]) / 1000 for cold in (False, True)}
        by_stage = [statistics.median(r[index][2].get(stage, 0) for r in results[True]) / 1000 for stage in stages]
        for cold in (False, True):
            sums[(name.split()[0], cold)] += medians[cold]
        print(f"{name:<52}{medians[False]:>7.0f}{medians[True]:>7.0f}  " + " ".join(f"{v:>5.0f}" for v in by_stage))
    for operation in ("create+rm", "exec", "inspect"):
        print(f"{'sum: ' + operation:<52}{sums[(operation, False)]:>7.0f}{sums[(operation, True)]:>7.0f}")


if __name__ == "__main__":
    main()
