"""How long ``policy apply`` holds SQLite's write lock, against the size of the policy.

    .venv/bin/python bench/apply_lock_bench.py [--users 1000] [--roles 100] [--rounds 5]

Builds the benchmark's SQLite store (``plugin_bench.prepare_state``: the developer policy plus
``--roles`` roles and ``--users`` users), then applies the stored policy with one user added,
``--rounds`` times. Prints the whole apply's time and how long each write transaction (the one
that holds the lock: ownership records and the audit shipper wait for it) lasted.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plugin_bench

from authz.policy.schema import parse_policy
from authz.storage import Database
from authz.storage.directory import PolicyStore
from authz.storage.yamlio import export_document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--roles", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="authz-apply-") as tmp:
        env, _ = plugin_bench.prepare_state(Path(tmp) / "state", args.users, args.roles)
        held: list[float] = []
        original = Database.session

        @contextlib.contextmanager
        def timed(self: Database, write: bool = False, consistent: bool = False) -> Iterator[object]:
            started = time.monotonic()
            with original(self, write, consistent) as session:
                yield session
            if write:
                held.append(time.monotonic() - started)

        Database.session = timed  # type: ignore[method-assign,assignment]
        store = PolicyStore(Database(env["AUTHZ_DATABASE_URL"]))
        applies: list[float] = []
        for n in range(args.rounds):
            document = export_document(store.load_policy())
            document["users"][f"added-{n}"] = {"roles": ["viewer"]}
            started = time.monotonic()
            store.apply_policy(parse_policy(document), "bench")
            applies.append(time.monotonic() - started)
    print(f"{args.users} users, {args.roles} roles, one user added per apply, {args.rounds} applies")
    print("apply s:            " + " ".join(f"{x:.2f}" for x in applies))
    print("write lock held s:  " + " ".join(f"{x:.2f}" for x in held))
    print(f"median: apply {statistics.median(applies):.2f} s, lock held {statistics.median(held):.2f} s")


if __name__ == "__main__":
    main()
