"""The shipper: copies journaled audit records into the database, in order, exactly once.

A background thread (``JournalShipper.start``), in the process that writes the journal (the admin
UI, the CLI) or, for the plugin, in one process beside the workers (``authz.audit_ship_process``,
``follow_live=True``). For its own chain, for every *orphan* chain it can claim (``flock`` on
``<chain>.lock`` without blocking: a live writer holds its own lock for life, so only journals of
dead processes are claimable) and, with ``follow_live``, for every live chain of other processes,
it reads records after the highest seq the database holds and inserts them in batches of up to
``batch_rows`` per transaction, idempotently (``AuditStore.insert_chained``; two shippers on one
chain insert each record once). While a chain has been behind for ``grow_after`` seconds, its
batches grow up to ``max_batch_rows`` as long as one transaction stays within ``lock_budget``
seconds (see ``_next_limit``). A live chain is read up to its last complete line and is claimed
as an orphan once its writer has gone. Progress is that database seq: no sidecar file. When the
database fails the shipper backs off and retries; the journal keeps growing and nothing is lost.
Segments whose records are all in the database are deleted; a dead chain's journal and lock file
go once it is fully shipped (its checkpoint log stays for verify).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from authz.audit_chain import JournalRecord, parse_journal_line
from authz.audit_journal import MAX_RECORD_CHARS, JournalAuditSink, Segment, list_segments
from authz.storage.audit_store import AuditStore

__all__ = ["JournalShipper", "ShipperStatus"]

log = logging.getLogger(__name__)

# A pass reads what its batch needs, not a whole window: catching up on a long journal in 20-row
# batches read 1 MiB per batch. _READ_MAX holds the longest line the journal writes (its record,
# refused beyond MAX_RECORD_CHARS, and the chain fields around it).
_TYPICAL_LINE = 4 * 1024
_READ_MIN = 64 * 1024
_READ_MAX = MAX_RECORD_CHARS + 64 * 1024


class _Cursor:
    """Where shipping of one chain stands: the next journal byte to read and the DB's seq."""

    def __init__(self, directory: Path, chain: str, shipped: int, lock_fd: int = -1, *, live: bool = False) -> None:
        self.directory = directory
        self.chain = chain
        self.shipped = shipped  # every record up to here is in the database
        self.next_seq = shipped + 1
        self.lock_fd = lock_fd  # >= 0: an orphan we claimed
        self.live = live  # another process writes it now (follow_live): followed, never removed
        self.segment: Segment | None = None
        self.offset = 0
        self.pending: list[JournalRecord] = []  # read, not yet committed
        self.limit = 0  # rows of the next batch (JournalShipper._next_limit); 0: the shipper's batch_rows
        self.behind_since: float | None = None  # monotonic time of the first full batch since caught up
        self.at_end = False  # the last read found nothing more in the newest segment
        self.swept: Segment | None = None  # current segment at the last sweep that left nothing before it

    def segments(self) -> list[Segment]:
        return list_segments(self.directory).get(self.chain, [])

    def read(self, limit: int) -> list[JournalRecord]:
        """Up to ``limit`` complete records after ``next_seq - 1``, following segment rotation."""
        out: list[JournalRecord] = []
        self.at_end = False
        saw_next = False
        while len(out) < limit:
            # The directory is listed only when the current segment has nothing more: a pass that
            # finds its records where it left off costs one pread.
            if self.segment is not None and self._read_segment(self.segment, limit - len(out), out):
                saw_next = False
                continue
            segments = self.segments()
            if self.segment is None or self.segment not in segments:
                # Start (or restart) in the last segment that begins at or before the next seq.
                candidates = [s for s in segments if s.first_seq <= self.next_seq] or segments[:1]
                if not candidates:
                    self.at_end = True
                    break
                self.segment, self.offset = candidates[-1], 0
                continue
            later = [s for s in segments if s.first_seq > self.segment.first_seq]
            if not later:
                self.at_end = True
                break
            if saw_next:  # re-read once after seeing the next segment: the writer is done here
                self.segment, self.offset, saw_next = later[0], 0, False
            else:
                saw_next = True
        return out

    def _read_segment(self, segment: Segment, limit: int, out: list[JournalRecord]) -> int:
        """Up to ``limit`` new records from ``segment`` at ``offset``; 0 only when no complete line
        follows (lines already in the database are passed over, however many there are)."""
        try:
            fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        got = 0
        try:
            while got < limit:
                # Enough for the lines still wanted; more while not even one complete line fits.
                size = min(_READ_MAX, max(_READ_MIN, (limit - got) * _TYPICAL_LINE))
                data = os.pread(fd, size, self.offset)
                while data.find(b"\n") < 0 and len(data) == size and size < _READ_MAX:
                    size = min(_READ_MAX, size * 4)
                    data = os.pread(fd, size, self.offset)
                start = 0
                while got < limit:
                    end = data.find(b"\n", start)
                    if end < 0:
                        break  # an incomplete last line: being written, or torn by a crash
                    line, start = data[start:end], end + 1
                    try:
                        record = parse_journal_line(line)
                    except ValueError as exc:
                        log.error("audit journal %s: skipping an unreadable line at byte %d: %s", segment.path,
                                  self.offset + start, exc)  # fmt: skip
                        continue
                    if record.seq < self.next_seq or record.chain != self.chain:
                        continue  # already in the database (the segment is read from its start)
                    if record.seq > self.next_seq:
                        # Shipped anyway: dropping what follows would lose records; verify reports the gap.
                        log.error("audit journal %s: records %d..%d are missing", segment.path, self.next_seq,
                                  record.seq - 1)  # fmt: skip
                    out.append(record)
                    self.next_seq = record.seq + 1
                    got += 1
                self.offset += start
                if start == 0 or len(data) < size:
                    break  # the end of what is written
        finally:
            os.close(fd)
        return got


class JournalShipper:
    """Ships journal records of this process's sink and of orphan chains into ``store``."""

    def __init__(
        self,
        directory: Path,
        store: AuditStore,
        sink: JournalAuditSink | None = None,
        *,
        batch_rows: int = 500,
        max_batch_rows: int | None = None,
        lock_budget: float = 0.002,
        grow_after: float = 0.0,
        scan_interval: float = 5.0,
        idle_wait: float = 0.2,
        max_backoff: float = 5.0,
        follow_live: bool = False,
        status_path: Path | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.follow_live = follow_live
        # Where progress is published for the writers (``ShipperStatus``): the plugin's workers
        # report their backlog from it when another process ships their chains.
        self.status_path = status_path
        self._published: tuple[dict[str, int], str | None] | None = None
        self._last_publish = float("-inf")
        self.store = store
        self.sink = sink
        self.batch_rows = batch_rows
        self.max_batch_rows = max(max_batch_rows or batch_rows, batch_rows)
        self.lock_budget = lock_budget
        self.grow_after = grow_after
        self.scan_interval = scan_interval
        self.idle_wait = idle_wait
        self.max_backoff = max_backoff
        self.last_error: str | None = None
        self._cursors: dict[str, _Cursor] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_scan = float("-inf")
        self._lock = threading.Lock()  # one pass at a time (the thread, or a test calling ship_once)
        if sink is not None:
            sink.add_listener(self._on_commit)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-shipper", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after its current pass and release claimed orphans."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            for cursor in list(self._cursors.values()):
                self._drop(cursor)

    def wake(self) -> None:
        self._wake.set()

    def drain(self, seconds: float) -> int:
        """Ship until a pass finds nothing or ``seconds`` have passed (a stopping shipper's last work).

        Looks for orphans at every pass, so chains whose writers have just exited are finished and
        removed. Returns how many records were committed; a database failure ends the drain (what
        is left stays in the journal for the next start).
        """
        end = time.monotonic() + seconds
        total = 0
        while time.monotonic() < end:
            try:
                shipped = self.ship_once(scan=True)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("audit shipper: %s; the rest stays in the journal", self.last_error)
                break
            total += shipped
            if shipped == 0:
                break
        return total

    def _on_commit(self) -> None:
        # A full batch is worth a transaction now; smaller ones wait for idle_wait, so the shipper
        # does not compete with request threads for the GIL after every single record.
        if self.backlog() >= self.batch_rows:
            self._wake.set()

    def backlog(self) -> int:
        """Records journaled but not yet in the database, as far as this process knows them."""
        total = 0
        own = self.sink.chain if self.sink is not None else None
        for cursor in list(self._cursors.values()):
            if cursor.chain == own and self.sink is not None:
                total += max(self.sink.durable_seq - cursor.shipped, 0)
            else:
                total += len(cursor.pending) + (0 if cursor.at_end else 1)
        if own is not None and own not in self._cursors and self.sink is not None:
            total += self.sink.durable_seq
        return total

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                shipped = self.ship_once()
            except Exception as exc:  # the shipper must outlive any database failure
                self.last_error = f"{type(exc).__name__}: {exc}"
                backoff = min(self.max_backoff, backoff * 2 or 0.05)
                log.warning("audit shipper: %s; retrying in %.2fs", self.last_error, backoff)
                self._stop.wait(backoff)
                continue
            backoff, self.last_error = 0.0, None
            if shipped == 0:
                self._wake.wait(self.idle_wait)
                self._wake.clear()

    def ship_once(self, scan: bool | None = None) -> int:
        """One pass: up to one batch per chain. Returns how many records were committed.

        ``scan``: look for orphan chains now (default: every ``scan_interval`` seconds).
        Raises ``StoreError`` when the database fails (nothing is lost; call again).
        """
        with self._lock:
            try:
                return self._pass(scan)
            finally:
                if self.status_path is not None:
                    self._publish(self.status_path)

    def _pass(self, scan: bool | None) -> int:
        own = self.sink.chain if self.sink is not None else None
        if own is not None and own not in self._cursors:
            self._cursors[own] = _Cursor(self.directory, own, 0)  # a new chain: nothing in the DB
        now = time.monotonic()
        if scan or (scan is None and now - self._last_scan >= self.scan_interval):
            self._last_scan = now
            self._claim_orphans(own)
        total = 0
        for cursor in list(self._cursors.values()):
            total += self._ship(cursor, own)
        return total

    def shipped(self) -> dict[str, int]:
        """The highest seq in the database of every chain this shipper follows."""
        return {chain: cursor.shipped for chain, cursor in list(self._cursors.items())}

    def _publish(self, path: Path) -> None:
        """Write the status file when progress changed (at most every 0.5 s), or each 5 s anyway."""
        state = (self.shipped(), self.last_error)
        now = time.monotonic()
        due = 0.5 if state != self._published else 5.0
        if now - self._last_publish < due:
            return
        try:
            ShipperStatus.write(path, state[0], state[1])
        except OSError as exc:
            log.error("audit shipper: cannot write its status file %s: %s", path, exc)
            return
        self._published, self._last_publish = state, now

    def _ship(self, cursor: _Cursor, own: str | None) -> int:
        if cursor.chain != own and cursor.lock_fd < 0 and not cursor.live:
            self._drop(cursor)  # our former chain (given up after a write failure): claim it as an orphan
            return 0
        limit = cursor.limit or self.batch_rows
        if not cursor.pending:
            cursor.pending = cursor.read(limit)
        count = len(cursor.pending)
        if cursor.pending:
            began = time.perf_counter()
            self.store.insert_chained(cursor.pending)
            took = time.perf_counter() - began
            now = time.monotonic()
            if count < limit:
                cursor.behind_since = None
            elif cursor.behind_since is None:
                cursor.behind_since = now
            behind_for = now - cursor.behind_since if cursor.behind_since is not None else 0.0
            cursor.limit = self._next_limit(limit, count, took, behind_for)
            cursor.shipped = cursor.pending[-1].seq
            cursor.pending = []
        finished = cursor.at_end and count < limit and cursor.lock_fd >= 0  # a claimed orphan, drained
        self._delete_shipped(cursor, finished=finished)
        return count

    def _next_limit(self, limit: int, count: int, took: float, behind_for: float = 0.0) -> int:
        """The next batch's rows after ``count`` of at most ``limit`` were inserted in ``took``
        seconds, the chain having been behind (full batches) for ``behind_for`` seconds.

        A transaction has a fixed cost (its commit writes every page it touched), so larger
        batches cost less CPU per row: 21 µs instead of 29 at 100 rows rather than 20, a backlog
        shipped in one process. But SQLite has one write lock, and an ownership record (dockerd
        waits for it) queues behind the batch holding it (BENCHMARKS.md section 4). So batches grow
        only under sustained load: once the chain has been behind for ``grow_after`` seconds, they
        double while an insert stays within half of ``lock_budget``; they halve beyond it, and
        start again from ``batch_rows`` once caught up. (Growing at once also grew them for the
        records that gather while an idle shipper waits, and an owner record's p99 at one
        connection went from 1.0 to 1.4 ms.)
        """
        if count < limit:
            return self.batch_rows
        if took > self.lock_budget:
            return max(self.batch_rows, limit // 2)
        if took * 2 <= self.lock_budget and behind_for >= self.grow_after:
            return min(self.max_batch_rows, limit * 2)
        return limit

    def _delete_shipped(self, cursor: _Cursor, finished: bool) -> None:
        if not finished and cursor.segment is not None and cursor.segment == cursor.swept:
            return  # nothing is left before the current segment: the next sweep is when it moves on
        segments = cursor.segments()
        left = False
        for segment, following in itertools.pairwise(segments):
            if segment == cursor.segment:
                break
            if following.first_seq - 1 <= cursor.shipped:
                with contextlib.suppress(FileNotFoundError):
                    segment.path.unlink()
            else:
                left = True
        cursor.swept = None if left else cursor.segment
        if finished:
            for segment in cursor.segments():
                with contextlib.suppress(FileNotFoundError):
                    segment.path.unlink()
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{cursor.chain}.lock").unlink()  # unlinked while we hold it: no one else can
            log.info("audit journal of chain %s fully shipped (seq %d) and removed", cursor.chain, cursor.shipped)
            self._drop(cursor)

    def _claim_orphans(self, own: str | None) -> None:
        for cursor in list(self._cursors.values()):
            if cursor.live:  # has its writer gone? Then it is ours to drain and remove.
                fd = self._try_lock(cursor.chain)
                if fd >= 0:
                    cursor.lock_fd, cursor.live = fd, False
                    log.info("audit shipper: the writer of chain %s has gone; draining it", cursor.chain)
        for chain in list_segments(self.directory):
            if chain == own or chain in self._cursors:
                continue
            fd = self._try_lock(chain)
            if fd < 0 and not self.follow_live:
                continue  # alive, or claimed by another shipper
            try:
                shipped = self.store.max_seq(chain)
            except Exception:
                if fd >= 0:
                    os.close(fd)
                raise
            if fd >= 0:
                log.info("audit shipper: shipping orphan chain %s after seq %d", chain, shipped)
            self._cursors[chain] = _Cursor(self.directory, chain, shipped, fd, live=fd < 0)

    def _try_lock(self, chain: str) -> int:
        """The claimed lock of ``chain`` (an open descriptor), or -1 while someone else holds it."""
        try:
            fd = os.open(self.directory / f"{chain}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.error("audit shipper: cannot open the lock of chain %s: %s", chain, exc)
            return -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return -1
        return fd

    def _drop(self, cursor: _Cursor) -> None:
        self._cursors.pop(cursor.chain, None)
        if cursor.lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(cursor.lock_fd)
            cursor.lock_fd = -1


@dataclass(frozen=True, slots=True)
class ShipperStatus:
    """What a shipper in another process last published: its progress per chain and its error."""

    pid: int
    updated: float  # time.time() of the write
    error: str | None
    shipped: dict[str, int]

    @staticmethod
    def write(path: Path, shipped: dict[str, int], error: str | None) -> None:
        """Replace ``path`` atomically (readers see the old or the new file, never a torn one)."""
        data = json.dumps({"pid": os.getpid(), "updated": time.time(), "error": error, "shipped": shipped})
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(data, encoding="utf-8")
        os.replace(temporary, path)

    @classmethod
    def read(cls, path: Path) -> ShipperStatus | None:
        """The published status; None when there is none (or it cannot be read)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            shipped = {str(chain): int(seq) for chain, seq in data["shipped"].items()}
            return cls(int(data["pid"]), float(data["updated"]), data.get("error"), shipped)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def backlog(self, chain: str | None, durable_seq: int) -> int:
        """Records of ``chain`` durable in its journal but not yet reported as shipped."""
        if chain is None:
            return 0
        return max(durable_seq - self.shipped.get(chain, 0), 0)
