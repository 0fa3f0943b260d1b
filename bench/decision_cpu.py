"""CPU time of one decision in-process, per payload: the figure code changes are compared by.

    .venv/bin/python bench/decision_cpu.py [--calls 400] [--users 1000 --roles 100]

The same payloads, policy and token as bench/plugin_bench.py, handed to the protocol handlers of a
plugin app built as a worker builds it (``build_plugin_app``: policy poller, audit journal,
deadline-bounded ownership, metrics), with no HTTP and no load client. Each payload is decided
``--calls`` times in turn with the others; printed is the least thread CPU time one call took.
On a VM whose speed drifts by 2x, the minimum moves by a few per cent where medians and rates
move by tens: run it before and after a change (e.g. with ``git stash``) and compare.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from authz.composition import build_plugin_app
from authz.config import Config

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from plugin_bench import payload_label, payload_mix, prepare_state  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--roles", type=int, default=100)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="authz-cpu-bench-"))
    # Removed at exit, after the app's own exit hooks (atexit runs last what was registered first):
    # the audit journal writes its last checkpoint there when it closes.
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    env, token = prepare_state(tmp / "state", args.users, args.roles)
    os.environ.update(env)
    app = build_plugin_app(Config.from_env(), ship_in_process=False)
    routes = app.extensions["authz.protocol_routes"]
    calls = []
    for wire in payload_mix(token):
        head, body = wire.split(b"\r\n\r\n", 1)
        calls.append((payload_label(wire), routes[head.split(b" ")[1].decode()], body))
    for _ in range(100):  # warm-up: caches, first policy compile
        for _, handler, body in calls:
            handler(body)
    gc.collect()
    gc.freeze()  # as the workers do after start
    least = [float("inf")] * len(calls)
    for _ in range(args.calls):
        for index, (_, handler, body) in enumerate(calls):
            started = time.thread_time_ns()
            handler(body)
            least[index] = min(least[index], time.thread_time_ns() - started)
    print(f"least thread CPU of one call, {args.calls} calls each ({args.users} users, {args.roles} roles)")
    for (label, _, _), nanoseconds in zip(calls, least, strict=True):
        print(f"{label:<50}{nanoseconds / 1000:>8.0f} µs")
    print(f"{'sum over the mix':<50}{sum(least) / 1000:>8.0f} µs")


if __name__ == "__main__":
    main()
