"""Decision time against the size of the policy: 10 → 10,000 users, 5 → 500 roles.

    .venv/bin/python bench/scale_bench.py

In-process (no HTTP, in-memory audit) so that only the core's cost is measured: the same request
mix (lists, an allowed and a denied create, an exec, a ping) decided for the same token user while
the directory grows. Flat means within 20 % of the smallest policy.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from plugin_bench import bench_policy, payload_mix  # noqa: E402

from authz.decide import Authorizer  # noqa: E402
from authz.identity.token import JwtVerifier, KeyStore, issue_token  # noqa: E402
from authz.memory import MemoryAuditSink, MemoryOwnership, StaticPolicySource  # noqa: E402
from authz.policy.schema import parse_policy  # noqa: E402
from authz.protocol import parse_request  # noqa: E402
from authz.request import Phase  # noqa: E402


def requests(token: str) -> list[bytes]:
    out = []
    for raw in payload_mix(token):
        head, body = raw.split(b"\r\n\r\n", 1)
        if b"AuthZReq" in head:
            out.append(body)
    return out


def per_decision_us(users: int, roles: int, keys: KeyStore, rounds: int = 300) -> float:
    source = StaticPolicySource(parse_policy(bench_policy(users, roles)))
    authorizer = Authorizer(source, MemoryAuditSink(), JwtVerifier(keys), MemoryOwnership(), node="bench")
    token = issue_token(keys, "bench", 3600, time.time()).token
    calls = [parse_request(body, Phase.REQUEST) for body in requests(token)]
    for call in calls:  # warm: compile the snapshot, cache the token
        authorizer.authorize(call)
    samples = []
    for _ in range(5):
        started = time.thread_time()  # CPU time of this thread: other load on the machine does not count
        for _ in range(rounds // 5):
            for call in calls:
                authorizer.authorize(call)
        samples.append((time.thread_time() - started) / (rounds // 5 * len(calls)) * 1e6)
    return statistics.median(samples)


def main() -> None:
    keys = KeyStore(Path(tempfile.mkdtemp(prefix="authz-scale-")) / "keys").load_or_create()
    print("decision CPU time (µs per decision, median of 5) against policy size")
    sweeps = {"users (5 roles)": [(n, 5) for n in (10, 100, 1000, 10_000)],
              "roles (1,000 users)": [(1000, n) for n in (5, 50, 500)]}  # fmt: skip
    per_decision_us(10, 5, keys)  # warm the interpreter (first-call costs) before anything is measured
    for title, points in sweeps.items():
        figures = [(point, per_decision_us(*point, keys)) for point in points]
        smallest = min(us for _, us in figures)
        print(f"\n{title}")
        for (users, roles), us in figures:
            print(f"  users={users:>6} roles={roles:>4}  {us:8.1f} µs   {us / smallest:5.2f}× the fastest")
        spread = max(us for _, us in figures) / smallest
        print(f"  slowest / fastest: {spread:.2f} ({'flat' if spread <= 1.2 else 'NOT flat'}: limit 1.20)")


if __name__ == "__main__":
    main()
