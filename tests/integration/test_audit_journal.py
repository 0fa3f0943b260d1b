"""The audit journal (group commit, fail closed) and the shipper (in order, exactly once, orphans)
against a real SQLite store in tmp_path."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from authz.audit import AuditEvent
from authz.audit_chain import parse_journal_line, verify_chain
from authz.audit_journal import MAX_RECORD_CHARS, JournalAuditSink, journal_tail_seq, list_segments
from authz.audit_keys import CheckpointLog, load_public_keys, signature_check
from authz.audit_shipper import JournalShipper, ShipperStatus
from authz.errors import StoreError
from authz.storage import Database, migrate
from authz.storage.audit_store import AuditStore
from authz.storage.models import AuditRow


def event(i: int, user: str = "bob") -> AuditEvent:
    return AuditEvent(time=time.time(), request_id=f"r{i}", node="n1", phase="request", user=user, source="token",
                      roles=("developer",), action="container:start", method="POST", uri=f"/containers/c{i}/start",
                      object=f"c{i}", allow=True, mode="enforce", rule="r", role="developer", reason="ok",
                      message="")  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    migrate(url)
    db = Database(url)
    yield AuditStore(db)
    db.dispose()


def make_sink(tmp_path: Path, **kw: object) -> JournalAuditSink:
    return JournalAuditSink(tmp_path / "journal", "n1", checkpoints=CheckpointLog(tmp_path / "checkpoints"),
                            key_dir=tmp_path / "keys", **kw)  # type: ignore[arg-type]  # fmt: skip


def drain(shipper: JournalShipper, done: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"shipper did not catch up (backlog {shipper.backlog()})"
        try:
            shipper.ship_once(scan=True)
        except StoreError:
            time.sleep(0.05)


def stored(store: AuditStore) -> list[tuple[str, int, str]]:
    with store.db.session() as session:
        rows = session.execute(select(AuditRow.chain, AuditRow.seq, AuditRow.request_id).order_by(AuditRow.id))
        return [(str(c), int(s), str(r)) for c, s, r in rows]


def test_concurrent_writers_land_exactly_once_in_seq_order(tmp_path: Path, store: AuditStore) -> None:
    sink = make_sink(tmp_path)
    shipper = JournalShipper(tmp_path / "journal", store, sink, idle_wait=0.05)
    shipper.start()
    threads, per_thread = 8, 150
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(per_thread):
                sink.write(event(t * 1000 + i))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert errors == []
    deadline = time.monotonic() + 20
    while shipper.backlog() and time.monotonic() < deadline:
        time.sleep(0.05)
    shipper.stop()
    sink.close()
    rows = stored(store)
    assert len(rows) == threads * per_thread
    assert sorted(r[2] for r in rows) == sorted(f"r{t * 1000 + i}" for t in range(threads) for i in range(per_thread))
    sink_chain = rows[0][0]
    assert {r[0] for r in rows} == {sink_chain}
    assert [r[1] for r in rows] == list(range(1, threads * per_thread + 1))  # ids follow seq
    keys = load_public_keys(tmp_path / "keys")
    checkpoints = CheckpointLog(tmp_path / "checkpoints").read(sink_chain)
    report = verify_chain(sink_chain, store.iter_chain(sink_chain), checkpoints, signature_check(keys))
    assert report.ok, report.summary()
    assert report.last_checkpoint_seq == threads * per_thread  # close() checkpoints the tail


def test_database_down_then_back_catches_up_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'later.db'}"
    db = Database(url)  # not migrated: every insert fails with "no such table"
    store = AuditStore(db)
    sink = make_sink(tmp_path)
    shipper = JournalShipper(tmp_path / "journal", store, sink)
    for i in range(40):
        sink.write(event(i))  # durable in the journal although the store is down
    with pytest.raises(StoreError, match="no such table"):
        shipper.ship_once()
    assert shipper.backlog() == 40
    assert journal_tail_seq(tmp_path / "journal", sink.chain or "") == 40
    migrate(url)  # the store comes back
    for i in range(40, 60):
        sink.write(event(i))
    drain(shipper, lambda: shipper.backlog() == 0)
    rows = stored(store)
    assert [r[1] for r in rows] == list(range(1, 61))
    assert [r[2] for r in rows] == [f"r{i}" for i in range(60)]
    # Shipping the same records again (a commit whose answer was lost) stores nothing twice.
    segment = list_segments(tmp_path / "journal")[sink.chain or ""][0]
    again = [parse_journal_line(line) for line in segment.path.read_bytes().splitlines()]
    store.insert_chained(again)
    assert len(again) == 60
    assert len(stored(store)) == 60
    sink.close()
    db.dispose()


def test_database_in_a_missing_directory_keeps_the_journal_growing(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'nowhere' / 'audit.db'}")
    sink = make_sink(tmp_path)
    shipper = JournalShipper(tmp_path / "journal", AuditStore(db), sink)
    for i in range(5):
        sink.write(event(i))
    with pytest.raises(StoreError):
        shipper.ship_once()
    assert shipper.backlog() == 5
    sink.close()
    db.dispose()


def test_rotated_segments_continue_the_chain_and_are_deleted_once_shipped(tmp_path: Path, store: AuditStore) -> None:
    sink = make_sink(tmp_path, segment_bytes=2000)
    shipper = JournalShipper(tmp_path / "journal", store, sink)
    for i in range(30):
        sink.write(event(i))
    assert len(list_segments(tmp_path / "journal")[sink.chain or ""]) > 3
    drain(shipper, lambda: shipper.backlog() == 0)
    shipper.ship_once()
    assert len(list_segments(tmp_path / "journal")[sink.chain or ""]) == 1  # only the live segment is kept
    assert [r[1] for r in stored(store)] == list(range(1, 31))
    report = verify_chain(sink.chain or "", store.iter_chain(sink.chain or ""), [], lambda _cp: True)
    assert report.ok, report.summary()
    sink.close()


def test_a_record_longer_than_the_first_read_is_shipped_with_those_around_it(tmp_path: Path, store: AuditStore) -> None:
    """A pass reads what its batch needs (64 KiB at first) and reads more for a longer line."""
    sink = make_sink(tmp_path)
    shipper = JournalShipper(tmp_path / "journal", store, sink, batch_rows=2)
    sink.write(event(0))
    sink.write(dataclasses.replace(event(1), message="m" * 700_000))
    sink.write(event(2))
    drain(shipper, lambda: shipper.backlog() == 0)
    assert [seq for _c, seq, _r in stored(store)] == [1, 2, 3]
    with store.db.session() as session:
        assert session.scalar(select(func.length(AuditRow.message)).where(AuditRow.seq == 2)) == 700_000
    sink.close()


def test_an_orphan_whose_first_megabytes_are_shipped_is_drained_to_its_end(tmp_path: Path, store: AuditStore) -> None:
    """A new shipper reads a claimed orphan from its segment's start, passing over what the
    database holds: a read window full of shipped lines is not the end of the segment (taking it
    for the end deleted the unshipped rest)."""
    journal = tmp_path / "journal"
    sink = make_sink(tmp_path)
    for i in range(400):
        sink.write(dataclasses.replace(event(i), message="m" * 4000))  # 1.6 MB in one segment
    chain = sink.chain or ""
    first = JournalShipper(journal, store, follow_live=True, batch_rows=300)
    assert first.ship_once(scan=True) == 300  # 1.2 MB shipped, then that shipper is gone
    sink.close()  # the writer exits: an orphan
    drain(JournalShipper(journal, store, batch_rows=20), lambda: chain not in list_segments(journal))
    assert [seq for _c, seq, _r in stored(store)] == list(range(1, 401))


class _PausingLock:
    """Wraps the sink's I/O lock: the thread named ``racer`` stops once before taking it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.paused = threading.Event()
        self.resume = threading.Event()

    def __enter__(self) -> Any:
        if threading.current_thread().name == "racer" and not self.paused.is_set():
            self.paused.set()
            assert self.resume.wait(10)
        return self.inner.__enter__()

    def __exit__(self, *exc: object) -> Any:
        return self.inner.__exit__(*exc)


def test_a_write_that_races_close_is_refused_and_leaves_no_chain_behind(tmp_path: Path) -> None:
    """A caller past the closed check when close() releases the chain: its record must not go
    through a closed (or reused) descriptor, nor into a new chain nobody releases."""
    journal = tmp_path / "journal"
    sink = make_sink(tmp_path, sync="interval")
    sink.write(event(0))
    chain = sink.chain
    io = _PausingLock(sink._io)
    sink._io = io  # type: ignore[assignment]
    outcome: list[str] = []

    def race() -> None:
        try:
            sink.write(event(1))
            outcome.append("journaled")
        except StoreError as exc:
            outcome.append(str(exc))

    racer = threading.Thread(target=race, name="racer")
    racer.start()
    assert io.paused.wait(10)  # past the closed check, not yet holding the lock
    sink.close()
    io.resume.set()
    racer.join(10)
    assert outcome == ["audit journal is closed"]
    assert list(list_segments(journal)) == [chain]
    assert journal_tail_seq(journal, chain or "") == 1


def test_a_shipper_beside_the_writers_follows_their_live_chains_then_drains_them(
    tmp_path: Path, store: AuditStore
) -> None:
    """``authzctl serve``'s shipper process: it writes no journal, it ships everyone else's."""
    journal = tmp_path / "journal"
    writers = [make_sink(tmp_path, segment_bytes=2000), make_sink(tmp_path)]
    for i in range(40):
        writers[i % 2].write(event(i))
    chains = [writer.chain or "" for writer in writers]
    assert len(list_segments(journal)[chains[0]]) > 2  # rotated while followed
    assert JournalShipper(journal, store).ship_once(scan=True) == 0  # live chains are not claimable
    status_path = journal / "shipper.json"
    follower = JournalShipper(journal, store, follow_live=True, status_path=status_path)
    drain(follower, lambda: len(stored(store)) == 40)
    for chain in chains:
        assert [seq for c, seq, _r in stored(store) if c == chain] == list(range(1, 21))
        assert chain in list_segments(journal)  # a live chain's journal is never removed
        assert (journal / f"{chain}.lock").exists()
    assert len(list_segments(journal)[chains[0]]) == 1  # only its shipped, finished segments went

    writers[0].write(event(40))  # durable (sync "always") but not shipped yet
    time.sleep(0.6)  # the status is rewritten at most every 0.5 s while progress changes
    follower.ship_once()
    status = ShipperStatus.read(status_path)
    assert status is not None
    assert status.pid == os.getpid()
    assert status.error is None
    assert status.shipped == {chains[0]: 21, chains[1]: 20}
    assert status.backlog(chains[0], writers[0].durable_seq) == 0
    writers[1].write(event(41))
    assert status.backlog(chains[1], writers[1].durable_seq) == 1  # what the writer's /healthz reports

    for writer in writers:
        writer.close()  # the writers exit: their chains become orphans, drained and removed
    assert follower.drain(10) == 1
    assert list_segments(journal) == {}
    assert not list(journal.glob("*.lock"))
    for chain in chains:
        report = verify_chain(chain, store.iter_chain(chain), [], lambda _cp: True)
        assert report.ok, report.summary()
    assert len(stored(store)) == 42


def test_shipper_status_that_cannot_be_read_is_none(tmp_path: Path) -> None:
    path = tmp_path / "shipper.json"
    assert ShipperStatus.read(path) is None
    for text in ("", "{", '{"pid": 1}', '{"pid": 1, "updated": 2, "shipped": []}', "[]"):
        path.write_text(text)
        assert ShipperStatus.read(path) is None, text
    ShipperStatus.write(path, {"n:1": 5}, "boom")
    status = ShipperStatus.read(path)
    assert status is not None
    assert (status.shipped, status.error) == ({"n:1": 5}, "boom")
    assert [status.backlog("n:1", 3), status.backlog("n:2", 3), status.backlog(None, 3)] == [0, 3, 0]


CHILD = """
import sys, time
from pathlib import Path
from authz.audit import AuditEvent
from authz.audit_journal import JournalAuditSink
sink = JournalAuditSink(Path(sys.argv[1]), "child")
i = 0
while True:
    sink.write(AuditEvent(time=time.time(), request_id=f"c{i}", node="child", phase="request", user="u",
                          source="token", roles=(), action="container:list", method="GET",
                          uri="/containers/json", object=None, allow=True, mode="enforce", rule=None,
                          role=None, reason="", message=""))
    print(sink.chain, i + 1, flush=True)
    i += 1
"""


def test_orphan_journal_of_a_killed_process_is_shipped_by_another(tmp_path: Path, store: AuditStore) -> None:
    journal = tmp_path / "journal"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(journal)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    acknowledged = 0
    chain = ""
    while acknowledged < 200:
        chain, count = child.stdout.readline().split()
        acknowledged = int(count)
    os.kill(child.pid, signal.SIGKILL)  # mid-stream: no close(), the lock dies with the process
    child.wait(10)
    child.stdout.close()
    sink = make_sink(tmp_path)
    sink.write(event(1))  # our own chain is live and must not be claimed by anyone
    shipper = JournalShipper(journal, store, sink)
    drain(shipper, lambda: chain not in list_segments(journal) and shipper.backlog() == 0)
    seqs = [seq for c, seq, _r in stored(store) if c == chain]
    assert len(seqs) >= acknowledged  # every acknowledged record, and no duplicate
    assert seqs == list(range(1, len(seqs) + 1))
    assert not (journal / f"{chain}.lock").exists()  # fully shipped dead chain removed
    assert sink.chain in list_segments(journal)  # the live one stays
    sink.close()


def test_journal_that_cannot_be_written_makes_write_raise(tmp_path: Path) -> None:
    full = JournalAuditSink(tmp_path / "j", "n1", journal_path=Path("/dev/full"))
    with pytest.raises(StoreError, match="No space left"):
        full.write(event(1))
    full.close()

    not_a_dir = tmp_path / "journal-file"
    not_a_dir.write_text("")  # the journal directory is a file
    broken = JournalAuditSink(not_a_dir, "n1")
    with pytest.raises(StoreError, match="cannot be written"):
        broken.write(event(1))
    not_a_dir.unlink()  # repaired: the next write succeeds on a fresh chain
    broken.write(event(2))
    assert broken.durable_seq == 1
    broken.close()


def test_records_the_database_would_refuse_are_refused_before_answering(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    with pytest.raises(StoreError, match="user is 200 characters"):
        sink.write(event(1, user="x" * 200))
    # Bounded as a whole too: the shipper reads every line in one piece (audit_shipper._READ_MAX).
    with pytest.raises(StoreError, match="the log keeps at most 16777216"):
        sink.write(dataclasses.replace(event(1), message="m" * MAX_RECORD_CHARS))
    sink.write(event(2))
    assert sink.durable_seq == 1  # the refused records took no seq
    sink.close()
    with pytest.raises(StoreError, match="closed"):
        sink.write(event(3))


def test_idempotent_insert_counts_rows_once(tmp_path: Path, store: AuditStore) -> None:
    sink = make_sink(tmp_path)
    shipper = JournalShipper(tmp_path / "journal", store, sink)
    for i in range(3):
        sink.write(event(i))
    drain(shipper, lambda: shipper.backlog() == 0)
    with store.db.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditRow)) == 3
    assert store.max_seq(sink.chain or "") == 3
    assert store.max_seq("nope") == 0
    sink.close()


def test_authorizer_denies_when_the_journal_fails_and_records_request_detail(tmp_path: Path) -> None:
    from authz.decide import Authorizer
    from authz.memory import StaticPolicySource
    from authz.policy.model import Policy
    from authz.request import DockerRequest

    ping = DockerRequest("GET", "/_ping")
    failing = JournalAuditSink(tmp_path / "j", "n1", journal_path=Path("/dev/full"))
    decision = Authorizer(StaticPolicySource(Policy()), failing).authorize(ping)
    assert decision.allow is False
    assert "audit log cannot be written" in decision.message
    failing.close()

    sink = make_sink(tmp_path)
    authorizer = Authorizer(StaticPolicySource(Policy()), sink, audit_level="request")
    assert authorizer.authorize(ping).allow is True
    body = b'{"Image":"alpine","Env":["TOKEN=abc123"]}'
    create = DockerRequest("POST", "/v1.41/containers/create", {"Content-Type": "application/json",
                                                               "Content-Length": str(len(body))}, body)  # fmt: skip
    authorizer.authorize(create)
    sink.close()
    (segments,) = list_segments(tmp_path / "journal").values()
    lines = [parse_journal_line(line) for line in segments[0].path.read_bytes().splitlines()]
    assert lines[0].event["detail"] == {"query": {}}
    assert lines[1].event["detail"]["image"] == "alpine"
    assert lines[1].event["detail"]["env_names"] == ["TOKEN"]
    assert b"abc123" not in b"".join(json.dumps(r.event).encode() for r in lines)


def test_batches_grow_while_a_chain_is_behind_and_start_over_once_caught_up(tmp_path: Path, store: AuditStore) -> None:
    sink = make_sink(tmp_path)
    shipper = JournalShipper(tmp_path / "journal", store, sink, batch_rows=5, max_batch_rows=40, lock_budget=60.0)
    for i in range(120):
        sink.write(event(i))
    counts = [shipper.ship_once() for _ in range(6)]
    assert counts == [5, 10, 20, 40, 40, 5]  # doubled while behind, capped, the rest
    assert shipper.ship_once() == 0
    for i in range(120, 150):
        sink.write(event(i))
    assert shipper.ship_once() == 5  # caught up in between: small again
    drain(shipper, lambda: shipper.backlog() == 0)
    assert [seq for _c, seq, _r in stored(store)] == list(range(1, 151))
    sink.close()


def test_batches_stay_at_their_size_while_an_insert_takes_longer_than_the_lock_budget(
    tmp_path: Path, store: AuditStore
) -> None:
    sink = make_sink(tmp_path)
    shipper = JournalShipper(tmp_path / "journal", store, sink, batch_rows=5, max_batch_rows=40, lock_budget=0.0)
    for i in range(30):
        sink.write(event(i))
    assert [shipper.ship_once() for _ in range(6)] == [5] * 6
    assert shipper._next_limit(40, 40, took=0.003) == 20  # over budget: halved
    assert shipper._next_limit(5, 5, took=0.003) == 5  # never below batch_rows
    sink.close()


def test_batches_grow_only_once_a_chain_has_been_behind_for_grow_after(tmp_path: Path, store: AuditStore) -> None:
    """The records that gather while the shipper waits between passes are not a sustained load."""
    sink = make_sink(tmp_path)
    shipper = JournalShipper(tmp_path / "journal", store, sink, batch_rows=5, max_batch_rows=40, lock_budget=60.0,
                             grow_after=60.0)  # fmt: skip
    for i in range(30):
        sink.write(event(i))
    assert [shipper.ship_once() for _ in range(6)] == [5] * 6
    assert shipper._next_limit(5, 5, took=0.0, behind_for=59.0) == 5
    assert shipper._next_limit(5, 5, took=0.0, behind_for=60.0) == 10
    assert shipper._next_limit(40, 3, took=0.0, behind_for=60.0) == 5  # caught up: small again
    sink.close()


def test_an_orphan_shipped_in_grown_batches_is_removed_once_drained(tmp_path: Path, store: AuditStore) -> None:
    journal = tmp_path / "journal"
    sink = make_sink(tmp_path)
    for i in range(300):
        sink.write(event(i))
    chain = sink.chain or ""
    sink.close()  # the writer exits: an orphan
    shipper = JournalShipper(journal, store, batch_rows=7, max_batch_rows=1000, lock_budget=60.0)
    drain(shipper, lambda: chain not in list_segments(journal))
    assert [seq for _c, seq, _r in stored(store)] == list(range(1, 301))
    assert not (journal / f"{chain}.lock").exists()


def test_shipped_records_read_back_as_written_and_verify(tmp_path: Path, store: AuditStore) -> None:
    """The shipper writes JSON columns with orjson where it can and reads lines with it: non-ASCII,
    nested detail and integers beyond 64 bits (which orjson reads as floats) come back unchanged."""
    sink = make_sink(tmp_path)
    shipper = JournalShipper(tmp_path / "journal", store, sink)
    written = [
        dataclasses.replace(event(0), roles=("développeur", "team0"), warnings=("ünïcode ✓",)),
        dataclasses.replace(event(1), detail={"memory": 2**70, "query": {"all": "1"}, "devices": ["/dev/é"]}),
        dataclasses.replace(event(2), detail={"n": -(2**63) - 1, "f": 0.1}, status_code=204),
    ]
    for record in written:
        sink.write(record)
    drain(shipper, lambda: shipper.backlog() == 0)
    assert [record.event for record in store.query()] == written
    report = verify_chain(sink.chain or "", store.iter_chain(sink.chain or ""), [], lambda _cp: True)
    assert report.ok, report.summary()
    sink.close()
