"""The in-process benchmarks still run against the code as it is (their timings are not judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run(script: str, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_cold_calls_times_every_call_of_a_create_rm_and_an_exec_by_stage() -> None:
    lines = run("cold_calls.py", "--calls", "3", "--pollute-mib", "1", "--sleep-ms", "0")
    calls = [line for line in lines if line.startswith(("create+rm ", "exec "))]
    assert len(calls) == 8  # four plugin calls each, every one allowed (the script stops on a deny)
    # The stages were timed: the create's AuthZRes spent time recording its owner.
    create_res = next(line for line in calls if "AuthZRes POST /v1.41/containers/create" in line)
    assert int(create_res.split()[-2]) > 0  # the ownership column
    assert any(line.startswith("sum: create+rm") for line in lines)


def test_decision_cpu_prints_every_payload_of_the_mix() -> None:
    lines = run("decision_cpu.py", "--calls", "3", "--users", "10", "--roles", "5")
    assert lines[-1].startswith("sum over the mix")
    assert len(lines) >= 12  # a header, the 11 payloads, the sum
