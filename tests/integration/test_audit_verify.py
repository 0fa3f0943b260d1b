"""``authzctl audit verify`` and ``audit prune`` end to end: journal → shipper → SQLite → verify,
then tampering with sqlite3 and seeing the first broken record named."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pytest

from authz.audit import AuditEvent
from authz.audit_journal import JournalAuditSink
from authz.audit_keys import CheckpointLog
from authz.audit_shipper import JournalShipper
from authz.config import Config
from authz.storage import Database
from authz.storage.audit_store import AuditStore


class CliRun(Protocol):
    code: int
    out: str
    err: str


Cli = Callable[..., CliRun]
DAY = 86400.0


def event(i: int, moment: float) -> AuditEvent:
    return AuditEvent(time=moment, request_id=f"r{i}", node="test-node", phase="request", user="bob",
                      source="token", roles=("developer",), action="container:start", method="POST",
                      uri=f"/containers/c{i}/start", object=f"c{i}", allow=True, mode="enforce", rule="r",
                      role="developer", reason="ok", message="")  # fmt: skip


def journal_records(times: list[float]) -> str:
    """Write one event per time through the real journal and shipper; return the chain id."""
    config = Config.from_env()
    db = Database(config.database_url)
    journal = config.state_dir / "audit-journal"
    sink = JournalAuditSink(journal, config.node, checkpoints=CheckpointLog(config.checkpoints_dir),
                            key_dir=config.state_dir / "audit-keys")  # fmt: skip
    shipper = JournalShipper(journal, AuditStore(db), sink)
    for i, moment in enumerate(times, start=1):
        sink.write(event(i, moment))
    sink.close()  # the last checkpoint names the last record
    while shipper.ship_once(scan=True):
        pass
    chain = sink.chain or next(iter(CheckpointLog(config.checkpoints_dir).chains()))
    shipper.stop()
    db.dispose()
    return chain


def sql(state: Path, statement: str, *params: object) -> None:
    with sqlite3.connect(state / "authz.db") as conn:
        conn.execute(statement, params)


def record_id(state: Path, seq: int) -> int:
    with sqlite3.connect(state / "authz.db") as conn:
        return int(conn.execute("SELECT id FROM audit_records WHERE seq = ?", (seq,)).fetchone()[0])


@pytest.fixture
def logged(cli: Cli, authz_env: Path) -> tuple[Cli, str]:
    assert cli("init").code == 0
    now = time.time()
    return cli, journal_records([now - 5 + i / 100 for i in range(50)])


def test_untouched_log_verifies(logged: tuple[Cli, str]) -> None:
    cli, chain = logged
    result = cli("audit", "verify")
    assert result.code == 0, result.out + result.err
    assert result.out.strip() == f"chain {chain}: 50 records, last checkpoint seq 50, ok"
    strict = cli("audit", "verify", "--strict", "--json")
    assert strict.code == 0, strict.out
    document = json.loads(strict.out)
    assert document["ok"] is True
    assert document["chains"][0]["records"] == 50


def test_updated_record_is_named(logged: tuple[Cli, str], authz_env: Path) -> None:
    cli, chain = logged
    sql(authz_env, "UPDATE audit_records SET allow = 0 WHERE seq = 17")
    result = cli("audit", "verify")
    assert result.code == 1
    assert f"chain {chain}: 16 records" in result.out
    assert f"BROKEN: altered at seq 17 (record id {record_id(authz_env, 17)})" in result.out
    assert "verification FAILED for 1 of 1 chain(s)" in result.err


def test_deleted_record_is_named(logged: tuple[Cli, str], authz_env: Path) -> None:
    cli, _chain = logged
    next_id = record_id(authz_env, 31)
    sql(authz_env, "DELETE FROM audit_records WHERE seq = 30")
    result = cli("audit", "verify", "--json")
    assert result.code == 1
    problem = json.loads(result.out)["chains"][0]["problem"]
    assert problem["kind"] == "deleted"
    assert problem["seq"] == 30
    assert problem["record_id"] == next_id


def test_truncated_tail_is_named(logged: tuple[Cli, str], authz_env: Path) -> None:
    cli, _chain = logged
    sql(authz_env, "DELETE FROM audit_records WHERE seq > 45")
    result = cli("audit", "verify")
    assert result.code == 1
    assert "truncated at seq 50" in result.out
    assert "ends at seq 45" in result.out


def test_swapped_records_are_named(logged: tuple[Cli, str], authz_env: Path) -> None:
    cli, _chain = logged
    sql(authz_env, "UPDATE audit_records SET seq = -1 WHERE seq = 10")
    sql(authz_env, "UPDATE audit_records SET seq = 10 WHERE seq = 11")
    sql(authz_env, "UPDATE audit_records SET seq = 11 WHERE seq = -1")
    result = cli("audit", "verify")
    assert result.code == 1
    assert "reordered at seq 10" in result.out


def test_forged_checkpoint_is_named(logged: tuple[Cli, str], authz_env: Path) -> None:
    cli, chain = logged
    log = authz_env / "checkpoints" / f"{chain}.log"
    lines = log.read_text().splitlines()
    forged = json.loads(lines[-1]) | {"seq": 49}
    log.write_text("\n".join([*lines[:-1], json.dumps(forged)]) + "\n")
    result = cli("audit", "verify", "--chain", chain)
    assert result.code == 1
    assert "bad checkpoint signature at seq 49" in result.out


def test_prune_keeps_the_chain_verifiable(cli: Cli, authz_env: Path) -> None:
    assert cli("init").code == 0
    now = time.time()
    chain = journal_records([now - 40 * DAY + i for i in range(20)] + [now - 5 + i / 10 for i in range(10)])
    dry = cli("audit", "prune", "--older-than", "30d", "--dry-run")
    assert dry.code == 0
    assert f"chain {chain}: would delete records up to seq 20" in dry.out
    result = cli("audit", "prune", "--older-than", "30d")
    assert result.code == 0, result.err
    assert f"chain {chain}: deleted 20 records up to seq 20" in result.out
    verify = cli("audit", "verify", "--strict")
    assert verify.code == 0, verify.out
    assert verify.out.strip() == f"chain {chain}: 10 records, last checkpoint seq 30, pruned up to seq 20, ok"
    assert cli("audit", "prune", "--older-than", "30d").out == ""  # nothing more to prune
    # An anchor nobody signed (records deleted by hand, anchor moved) is caught under --strict.
    sql(authz_env, "DELETE FROM audit_records WHERE seq <= 22")
    with sqlite3.connect(authz_env / "authz.db") as conn:
        digest = conn.execute("SELECT prev_hash FROM audit_records WHERE seq = 23").fetchone()[0]
        conn.execute("UPDATE audit_anchors SET seq = 22, record_hash = ?", (digest,))
    assert cli("audit", "verify").code == 0  # the hashes still link ...
    strict = cli("audit", "verify", "--strict")
    assert strict.code == 1
    assert "unsigned anchor at seq 22" in strict.out


def test_prune_refuses_a_broken_chain(cli: Cli, authz_env: Path) -> None:
    assert cli("init").code == 0
    now = time.time()
    journal_records([now - 40 * DAY + i for i in range(5)] + [now])
    sql(authz_env, "UPDATE audit_records SET user = 'mallory' WHERE seq = 2")
    result = cli("audit", "prune", "--older-than", "30d")
    assert result.code == 1
    assert "not pruning chain" in result.err
    assert "altered at seq 2" in result.err
    with sqlite3.connect(authz_env / "authz.db") as conn:
        assert conn.execute("SELECT count(*) FROM audit_records").fetchone()[0] == 6  # nothing deleted


def test_unchained_rows_are_reported(logged: tuple[Cli, str], authz_env: Path) -> None:
    cli, _chain = logged
    sql(authz_env, "UPDATE audit_records SET chain = NULL WHERE seq = 50")
    result = cli("audit", "verify")
    assert "1 records outside any chain" in result.out
    assert result.code == 1  # and the chain now misses its checkpointed tail
