"""Latency at the plugin socket while the policy changes: quiet runs and runs with a change every second.

    .venv/bin/python bench/policy_change_bench.py [--users 1000 --roles 100] [--seconds 8] [--runs 2]

Our plugin as in bench/plugin_bench.py (`authzctl serve --workers 2`, same payloads, one
connection). During the "changing" runs another process adds a user every ``--interval`` seconds
(``PolicyStore.add_user``, what ``authzctl user add`` does): each change is one SQLite write
transaction that re-validates the whole policy and records it in the history, and every worker's
poller then loads, compiles and indexes the new revision. Printed: overall p50/p99/max and, per
payload, the p99 and max, quiet and changing runs in turn.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from loadgen import LoadResult, run_load  # noqa: E402
from plugin_bench import AUTHZCTL, PYTHON, Server, payload_label, payload_mix, prepare_state  # noqa: E402

# The changing process: one long-lived interpreter, so that starting Python is not what is measured.
CHANGER = """
import sys, time
from authz.storage.db import Database
from authz.storage.directory import PolicyStore
store, tag, interval = PolicyStore(Database(sys.argv[1])), sys.argv[2], float(sys.argv[3])
for i in range(10**9):
    started = time.monotonic()
    store.add_user(f"change{tag}x{i}", "bench", roles=["viewer"])
    print(f"{(time.monotonic() - started) * 1000:.0f}", flush=True)
    time.sleep(max(0.0, interval - (time.monotonic() - started)))
"""


def at(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(label: str, result: LoadResult, payloads: list[bytes], change_ms: list[float]) -> None:
    changes = f"; {len(change_ms)} changes, each {min(change_ms):.0f}-{max(change_ms):.0f} ms" if change_ms else ""
    print(f"\n{label}: {result.rate:,.0f}/s, p50 {result.p50:.2f} ms, p99 {result.percentile(99):.2f} ms, "
          f"max {max(result.latencies_ms):.1f} ms{changes}")  # fmt: skip
    for index, values in sorted(result.by_payload().items()):
        print(f"  {payload_label(payloads[index]):<50}p99 {at(values, 0.99):7.2f}  max {max(values):7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--roles", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between policy changes")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="authz-change-bench-"))
    tags = itertools.count()
    try:
        env, token = prepare_state(tmp / "state", args.users, args.roles)
        payloads = payload_mix(token)
        server = Server([AUTHZCTL, "serve", "--socket", str(tmp / "authz.sock"), "--workers", "2"],
                        tmp / "authz.sock", env)  # fmt: skip
        try:
            run_load(str(server.socket), payloads, 1, 1.0)  # warm-up
            print(f"{args.users} users, {args.roles} roles, 1 connection, {args.seconds:g} s per run")
            for run in range(args.runs):
                report(f"quiet {run + 1}", run_load(str(server.socket), payloads, 1, args.seconds), payloads, [])
                changer = subprocess.Popen(
                    [PYTHON, "-c", CHANGER, env["AUTHZ_DATABASE_URL"], str(next(tags)), str(args.interval)],
                    env=env, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                try:
                    result = run_load(str(server.socket), payloads, 1, args.seconds)
                finally:
                    changer.terminate()
                    output, _ = changer.communicate(timeout=30)
                report(f"changing {run + 1}", result, payloads, [float(line) for line in output.split()])
        finally:
            server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
