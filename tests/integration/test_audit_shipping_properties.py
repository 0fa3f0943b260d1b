"""Lose nothing, over generated journals: whatever the record sizes, segment sizes, batch sizes
(fixed or growing) and how much an earlier shipper got through, a shipper started afresh (after a
restart) brings every record into the database exactly once, and removes only what is shipped.

Against real files and a real SQLite database in a temporary directory per example.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from authz.audit import AuditEvent
from authz.audit_chain import verify_chain
from authz.audit_journal import JournalAuditSink, list_segments
from authz.audit_shipper import JournalShipper
from authz.storage import Database, migrate
from authz.storage.audit_store import AuditStore
from authz.storage.models import AuditRow

# Lines of about one size per journal (so that what an earlier shipper got through can fill a
# whole read of the segment), now and then one over 64 KiB: longer than the shipper's first read.
_TYPICAL_SIZES = st.sampled_from([0, 3_000, 20_000])
_LONG = 70_000


def _event(i: int, message_size: int) -> AuditEvent:
    return AuditEvent(time=time.time(), request_id=f"r{i}", node="n1", phase="request", user="bob", source="token",
                      roles=("developer",), action="container:start", method="POST", uri=f"/containers/c{i}/start",
                      object=f"c{i}", allow=True, mode="enforce", rule="r", role="developer", reason="ok",
                      message="m" * message_size)  # fmt: skip


def _stored_seqs(store: AuditStore, chain: str) -> list[int]:
    with store.db.session() as session:
        return [
            int(seq)
            for seq in session.scalars(select(AuditRow.seq).where(AuditRow.chain == chain).order_by(AuditRow.id))
        ]


@dataclasses.dataclass
class Journal:
    sizes: list[int]  # message size of each record, in write order
    written_first: int  # records written before the first shipper runs
    segment_bytes: int
    first_batch: int
    first_passes: int  # passes of the first shipper (then it is gone, mid-journal)
    second_batch: int
    writer_exits: bool  # the writer exits before the second shipper: an orphan to drain and remove
    grow_to: int | None = None  # batches grow while behind, up to this many rows (the plugin's shipper)


@st.composite
def journals(draw: st.DrawFn) -> Journal:
    typical = draw(_TYPICAL_SIZES)
    sizes = draw(st.lists(st.sampled_from([typical] * 5 + [_LONG]), min_size=1, max_size=40))
    return Journal(
        sizes=sizes,
        written_first=draw(st.integers(0, len(sizes))),
        segment_bytes=draw(st.sampled_from([2_000, 40_000, 64 * 1024 * 1024])),
        first_batch=draw(st.sampled_from([1, 3, 20, 500])),
        first_passes=draw(st.integers(0, 3)),
        second_batch=draw(st.sampled_from([1, 3, 20, 500])),
        writer_exits=draw(st.booleans()),
        grow_to=draw(st.sampled_from([None, 8, 64])),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journals())
# The orphan whose shipped part filled the shipper's whole first read (records 11-20 were lost).
@example(
    Journal([20_000] * 20, 20, 64 * 1024 * 1024, first_batch=10, first_passes=1, second_batch=20, writer_exits=True)
)
def test_a_restarted_shipper_brings_every_record_in_exactly_once(journal: Journal) -> None:
    with tempfile.TemporaryDirectory(prefix="authz-ship-prop-") as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'audit.db'}"
        migrate(url)
        db = Database(url)
        try:
            store = AuditStore(db)
            directory = root / "journal"
            sink = JournalAuditSink(directory, "n1", segment_bytes=journal.segment_bytes, sync="interval")
            for i, size in enumerate(journal.sizes[: journal.written_first]):
                sink.write(_event(i, size))
            # Growing batches as the plugin's shipper does, at once (no lock budget, no wait).
            growth = {} if journal.grow_to is None else {"max_batch_rows": journal.grow_to, "lock_budget": 60.0}
            first = JournalShipper(directory, store, follow_live=True, batch_rows=journal.first_batch, **growth)
            for _ in range(journal.first_passes):
                first.ship_once(scan=True)
            for i, size in enumerate(journal.sizes[journal.written_first :], start=journal.written_first):
                sink.write(_event(i, size))
            chain = sink.chain or ""
            total = len(journal.sizes)
            if journal.writer_exits:
                sink.close()
            second = JournalShipper(directory, store, follow_live=True, batch_rows=journal.second_batch, **growth)
            for _ in range(total + 10):  # a batch per pass at worst, and a pass to finish the orphan
                second.ship_once(scan=True)
                if _stored_seqs(store, chain) == list(range(1, total + 1)) and (
                    not journal.writer_exits or chain not in list_segments(directory)
                ):
                    break
            assert _stored_seqs(store, chain) == list(range(1, total + 1))
            report = verify_chain(chain, store.iter_chain(chain), [], lambda _cp: True)
            assert report.ok, report.summary()
            if journal.writer_exits:
                assert chain not in list_segments(directory)  # drained and removed
                assert not (directory / f"{chain}.lock").exists()
            else:
                assert chain in list_segments(directory)  # a live chain's journal is kept
                sink.close()
        finally:
            db.dispose()
