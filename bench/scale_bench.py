"""Decision time against the size of the policy: 10 → 10,000 users, 5 → 500 roles.

    .venv/bin/python bench/scale_bench.py

In-process (no HTTP, audit events built but not kept) so that only the core's cost is measured: the same request
mix (lists, an allowed and a denied create, an exec, a ping) decided for the same token user while
the directory grows. Flat means within 20 % of the smallest policy. Also printed: the CPU time to
compile one revision of each policy from scratch (at start), and the next revision when a change
left the roles as they were (a user added: the poller's usual work after a change; not a request).
"""

from __future__ import annotations

import gc
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from plugin_bench import bench_policy, payload_mix  # noqa: E402

from authz.audit import AuditEvent  # noqa: E402
from authz.decide import Authorizer  # noqa: E402
from authz.identity.token import JwtVerifier, KeyStore, issue_token  # noqa: E402
from authz.memory import MemoryOwnership, StaticPolicySource  # noqa: E402
from authz.policy.compiled import compile_snapshot  # noqa: E402
from authz.policy.model import PolicySnapshot  # noqa: E402
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


class DiscardingAuditSink:
    """Takes every event and keeps none: the plugin's journal does not grow the heap, and an
    in-memory list would (300 µs instead of 170 per decision once the cyclic GC scans it)."""

    def write(self, event: AuditEvent) -> None:
        pass


_REVISIONS = itertools.count(1)


class Point:
    """One policy size: its authorizer and the same calls for the same token user."""

    def __init__(self, users: int, roles: int, keys: KeyStore) -> None:
        self.users, self.roles = users, roles
        # Distinct revisions, as the store's snapshots have: the directory index is memoised by
        # revision, and sizes sharing one would rebuild each other's index block after block.
        source = StaticPolicySource(parse_policy(bench_policy(users, roles)), revision=next(_REVISIONS))
        self.authorizer = Authorizer(source, DiscardingAuditSink(), JwtVerifier(keys), MemoryOwnership(), node="bench")
        token = issue_token(keys, "bench", 3600, time.time()).token
        self.calls = [parse_request(body, Phase.REQUEST) for body in requests(token)]
        self.samples: list[float] = []
        self.block(1)  # warm: compile the snapshot, cache the token
        self.compile_ms = min(_compile_ms(source) for _ in range(3))
        self.recompile_ms = min(_recompile_ms(source, bench_policy(users, roles)) for _ in range(3))

    def block(self, rounds: int) -> float:
        """µs of this thread's CPU per decision over ``rounds`` passes of the calls."""
        started = time.thread_time()  # CPU time of this thread: other load on the machine does not count
        for _ in range(rounds):
            for call in self.calls:
                self.authorizer.authorize(call)
        return (time.thread_time() - started) / (rounds * len(self.calls)) * 1e6


def _compile_ms(source: StaticPolicySource) -> float:
    started = time.thread_time()
    compile_snapshot(source.current())
    return (time.thread_time() - started) * 1000


def _recompile_ms(source: StaticPolicySource, doc: dict[str, Any]) -> float:
    """The next revision after a user was added: parsed afresh (equal roles, new objects), as the
    poller loads it, and compiled with the one before it."""
    current = source.current()
    before = compile_snapshot(current)
    doc["users"] = {**doc.get("users", {}), "bench-added": {"roles": ["viewer"]}}
    after = PolicySnapshot(revision=current.revision + 1, policy=parse_policy(doc))
    started = time.thread_time()
    compile_snapshot(after, previous=before)
    return (time.thread_time() - started) * 1000


def measure(points: list[Point], blocks: int = 9, rounds: int = 60) -> None:
    """Blocks taken in turn across all sizes, so a slow moment of the machine hits every size alike."""
    for _ in range(blocks):
        for point in points:
            gc.collect()
            point.samples.append(point.block(rounds))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="authz-scale-") as work:
        run(KeyStore(Path(work) / "keys").load_or_create())


def run(keys: KeyStore) -> None:
    print("decision CPU time (µs per decision, median of 9 interleaved blocks) against policy size")
    sweeps = {"users (5 roles)": [(n, 5) for n in (10, 100, 1000, 10_000)],
              "roles (1,000 users)": [(1000, n) for n in (5, 50, 500)]}  # fmt: skip
    Point(10, 5, keys).block(60)  # warm the interpreter (first-call costs) before anything is measured
    for title, sizes in sweeps.items():
        points = [Point(users, roles, keys) for users, roles in sizes]
        measure(points)
        figures = [(point, statistics.median(point.samples)) for point in points]
        smallest = min(us for _, us in figures)
        print(f"\n{title}")
        for point, us in figures:
            print(f"  users={point.users:>6} roles={point.roles:>4}  {us:8.1f} µs   {us / smallest:5.2f}× the fastest"
                  f"   compile: from scratch {point.compile_ms:6.1f} ms,"
                  f" after a user change {point.recompile_ms:5.1f} ms")  # fmt: skip
        spread = max(us for _, us in figures) / smallest
        print(f"  slowest / fastest: {spread:.2f} ({'flat' if spread <= 1.2 else 'NOT flat'}: limit 1.20)")


if __name__ == "__main__":
    main()
