"""Fleet mode: three plugin nodes, each in front of its own real dockerd, sharing one PostgreSQL.

Each node has its own ``AUTHZ_STATE_DIR`` (audit journal, checkpoints, audit key) and
``AUTHZ_NODE``; the token keys are node 1's, copied to the others (a fleet must verify the same
tokens: distribute ``<state>/keys`` with your configuration management). Only node 1 applies
the policy; the others only ``authzctl init`` (idempotent) against the shared database.

- A policy change applied with the CLI on one node reaches every node within 2 s (by revision
  polling, ``AUTHZ_REVISION_POLL`` = 0.5 s; LISTEN/NOTIFY is not used).
- PostgreSQL stopped under load: every node goes on deciding from its last policy and journals
  audit locally; once it is back, the central table holds every node's records exactly once and
  ``authzctl audit verify`` passes on every node.
- Names are per host: the same container name on two nodes names two containers, each judged by
  its own node's record, and each node's ownership prune judges only its own records.
- Migrations reach head on an empty SQLite file and an empty PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from auditlib import audit_rows, verify
from loadgen import Load, Op, assert_no_forbidden_allowed, check_audit, developer, privileged, viewer
from nodes import Supervisor, require_daemon, start_node
from stack import TEST_POLICY, Stack

from authz.storage import Database, current_revision, head_revision, migrate
from authz.storage.repositories import OwnershipRepository
from tests.support.postgres import PgCluster

PROPAGATION_WITHIN = 2.0
NODES = 3
Fleet = list[tuple[Stack, Supervisor]]


@contextlib.contextmanager
def start_fleet(pg_cluster: PgCluster, count: int, users: tuple[str, ...], database: str) -> Iterator[Fleet]:
    """Node 1 applies the policy; the others start in parallel with node 1's keys."""
    require_daemon()
    url = pg_cluster.new_database(database)

    def node(index: int, keys: Path | None) -> contextlib.AbstractContextManager[tuple[Stack, Supervisor]]:
        workdir = Path(tempfile.mkdtemp(prefix=f"authz-fleet{index}-", dir="/tmp"))
        return start_node(workdir, env={"AUTHZ_DATABASE_URL": url, "AUTHZ_NODE": f"node{index}"},
                          apply_policy=TEST_POLICY if keys is None else None, keys_from=keys,
                          users=users)  # fmt: skip

    with ExitStack() as stacks:
        first = stacks.enter_context(node(1, None))
        keys = Path(first[0].env["AUTHZ_STATE_DIR"]) / "keys"
        others = [node(index, keys) for index in range(2, count + 1)]
        with ThreadPoolExecutor(max_workers=len(others)) as pool:
            futures = [pool.submit(other.__enter__) for other in others]
        started: Fleet = [first]
        for other, future in zip(others, futures, strict=True):
            if future.exception() is None:
                stacks.push(other)  # leaving the fixture stops it
                started.append(future.result())
        for future in futures:
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]  # the others are stopped by the ExitStack
        yield started


@pytest.fixture
def fleet(pg_cluster: PgCluster) -> Iterator[tuple[Fleet, PgCluster]]:
    with start_fleet(pg_cluster, NODES, ("admin", "dev", "viewer"), "authz_fleet") as nodes:
        yield nodes, pg_cluster


def committed_at(url: str) -> float:
    """Wall time (epoch s) at which the newest policy revision was committed (policy_history.at)."""
    from datetime import UTC

    from sqlalchemy import select

    from authz.storage.models import PolicyHistoryRow

    db = Database(url)
    try:
        with db.session() as session:
            at = session.scalar(select(PolicyHistoryRow.at).order_by(PolicyHistoryRow.revision.desc()).limit(1))
    finally:
        db.dispose()
    assert at is not None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def change_and_wait(stacks: list[Stack], via: Stack, policy: Path, status: int, timeout: float = 10.0) -> list[float]:
    """Apply ``policy`` with ``via``'s CLI; seconds from its commit until each node answers the
    viewer's ``GET /containers/json`` with ``status``."""
    seen = [float("inf")] * len(stacks)
    stop = time.monotonic() + timeout + 5

    def poll(index: int, stack: Stack) -> None:
        while time.monotonic() < stop:
            if stack.api_as("viewer", "GET", "/containers/json").status == status:
                seen[index] = time.time()
                return
            time.sleep(0.02)

    threads = [threading.Thread(target=poll, args=pair) for pair in enumerate(stacks)]
    for thread in threads:
        thread.start()
    via.authzctl("policy", "apply", str(policy))
    for thread in threads:
        thread.join()
    commit = committed_at(via.env["AUTHZ_DATABASE_URL"])
    return [round(max(0.0, at - commit), 3) for at in seen]


@pytest.mark.e2e
@pytest.mark.postgres
def test_fleet_propagation_and_outage(fleet: tuple[Fleet, PgCluster], tmp_path: Path) -> None:
    nodes, cluster = fleet
    stacks = [stack for stack, _ in nodes]
    url = stacks[0].env["AUTHZ_DATABASE_URL"]
    assert all(stack.api_as("viewer", "GET", "/containers/json").status == 200 for stack in stacks)

    # -- propagation: one node's CLI changes the policy; every node must follow within 2 s
    roleless = tmp_path / "viewer-without-roles.yaml"
    roleless.write_text(TEST_POLICY.read_text().replace("viewer: {roles: [viewer]}", "viewer: {roles: []}"))
    removed = change_and_wait(stacks, stacks[1], roleless, 403)
    restored = change_and_wait(stacks, stacks[2], TEST_POLICY, 200)
    print(f"\nfleet propagation from commit (s per node): viewer's role removed {removed}, restored {restored}")
    assert max(removed) <= PROPAGATION_WITHIN, removed
    assert max(restored) <= PROPAGATION_WITHIN, restored
    # Those figures are each node's first worker to answer; the bound holds for every worker (each
    # polls on its own), so the load below, which must see no stale denial, starts once it passed.
    time.sleep(max(0.0, PROPAGATION_WITHIN - max(restored)))

    # -- outage: PostgreSQL stopped under load on every node
    loads = [Load(stack, [viewer, developer] + ([privileged] if i == 0 else [])).start()
             for i, stack in enumerate(stacks)]  # fmt: skip
    ops_by_node: list[list[Op]] = []
    try:
        time.sleep(2.0)
        cluster.stop()
        outage_started = time.monotonic()
        time.sleep(4.0)
        during = [load.since(outage_started) for load in loads]
        cluster.start()
        back = time.monotonic()
        time.sleep(2.0)
    finally:
        ops_by_node = [load.stop() for load in loads]
    ops = [op for node_ops in ops_by_node for op in node_ops]
    assert_no_forbidden_allowed(ops)
    for index, node_ops in enumerate(during):
        viewer_ops = [op for op in node_ops if op.kind == "viewer-ps" and op.ended < back]
        assert viewer_ops, f"node{index + 1}: no viewer decision during the outage"
        refused = [op for op in viewer_ops if op.outcome != "allowed"]
        assert not refused, f"node{index + 1} stopped deciding from its last policy: {refused[:2]}"
    # developers' own objects created during the outage: owner unknown until the store is back
    # (fail closed); everything else must have worked
    unexpected = [op for op in ops if op.kind not in ("dev-privileged", "dev-inspect", "dev-rm")
                  and op.outcome != "allowed"]  # fmt: skip
    assert not unexpected, unexpected[:3]

    tally = check_audit(url, ops, timeout=60)
    per_node = dict.fromkeys((f"node{i}" for i in range(1, NODES + 1)), 0)
    for *_, node, _action in audit_rows(url):
        per_node[node] = per_node.get(node, 0) + 1
    for stack in stacks:
        verify(stack.env)
    print(f"fleet outage: {tally}; records per node: {per_node}")
    assert all(per_node[f"node{i}"] > 0 for i in range(1, NODES + 1)), per_node


@pytest.mark.e2e
@pytest.mark.postgres
def test_names_and_owners_are_per_host(pg_cluster: PgCluster) -> None:
    """Docker names are per daemon. dev's "web" on node 1 and dev2's "web" on node 2 are two
    containers: on node 1, "web" is dev's (dev2 may not stop it, dev may), and node 2's create
    must not take the name from node 1's record. One shared table once made node 1 resolve "web"
    to dev2's container on node 2: dev2 could stop dev's container, dev could not."""
    with start_fleet(pg_cluster, 2, ("admin", "dev", "dev2"), "authz_fleet_names") as nodes:
        one, two = (stack for stack, _ in nodes)
        create = ("create", "--name", "web", "--network", "none", "--user", "1000", "tiny", "sleep", "60")
        assert one.docker_as("dev", *create).returncode == 0
        assert two.docker_as("dev2", *create).returncode == 0
        stolen = one.docker_as("dev2", "rm", "-f", "web")
        assert stolen.returncode != 0, "dev2 removed dev's container on node 1"
        assert "authz: denied container:delete for dev2" in stolen.stderr, stolen.stderr
        own = one.docker_as("dev", "rm", "-f", "web")
        assert own.returncode == 0, own.stderr
        assert two.docker_as("dev2", "rm", "-f", "web").returncode == 0
        # A volume's ID is its name: both hosts' "data" volumes are recorded, each for its node.
        assert one.docker_as("dev", "volume", "create", "data").returncode == 0
        assert two.docker_as("dev2", "volume", "create", "data").returncode == 0
        assert one.docker_as("dev2", "volume", "rm", "data").returncode != 0
        for stack, user in ((one, "dev"), (two, "dev2")):
            removed = stack.docker_as(user, "volume", "rm", "data")
            assert removed.returncode == 0, f"{user} could not remove their own volume: {removed.stderr}"
        # Each node prunes its own records: node 2's container, still recorded after node 1's
        # sweep, is not judged by node 1's daemon.
        assert two.docker_as("dev2", *create).returncode == 0
        one.authzctl("ownership", "prune")
        assert '"name": "web"' in two.authzctl("ownership", "list", "--json", "--owner", "dev2").stdout
        assert two.docker_as("dev2", "rm", "-f", "web").returncode == 0
        # Records node 1 cannot speak for by default: from before nodes were recorded, and from a
        # former name of the host. Each is judged only when the admin says so.
        db = Database(one.env["AUTHZ_DATABASE_URL"])
        try:
            OwnershipRepository(db).record("container", "e" * 64, "legacy", "dev")
            OwnershipRepository(db, node="node1-old").record("container", "f" * 64, "renamed", "dev")
        finally:
            db.dispose()

        def ids() -> set[str]:
            listing = one.authzctl("ownership", "list", "--json", "--owner", "dev").stdout
            return {json.loads(line)["id"] for line in listing.splitlines()}

        one.authzctl("ownership", "prune")
        assert {"e" * 64, "f" * 64} <= ids()
        one.authzctl("ownership", "prune", "--former-node", "node1-old")
        assert "f" * 64 not in ids()
        assert "e" * 64 in ids()
        one.authzctl("ownership", "prune", "--single-host")
        assert "e" * 64 not in ids()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_migrations_reach_head_on_an_empty_database(backend: str, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:  # fmt: skip
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        url = request.getfixturevalue("pg_cluster").new_database("authz_empty")
    db = Database(url)
    try:
        assert current_revision(db) is None
        assert migrate(db) == head_revision()
        assert current_revision(db) == head_revision()
        assert migrate(db) == head_revision()  # idempotent: a second node's `authzctl init`
    finally:
        db.dispose()
