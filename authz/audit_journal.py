"""The audit journal: every record is fsync'd to a local file before the daemon gets its answer.

``JournalAuditSink`` implements ``authz.ports.AuditSink``. Each process writes its own hash chain
(``<node>:<8 hex>``, new at every process start) into segment files::

    <state>/audit-journal/<chain>.<first seq, 12 digits>.jsonl   one JSON line per record
    <state>/audit-journal/<chain>.lock                            flock held by the writer for life

Two durability modes (``AUTHZ_AUDIT_FSYNC``):

- ``always``: group commit. Callers queue their event and wait; one writer thread per process
  takes every queued event, appends their lines with one ``write``, ``fdatasync``s once and wakes
  them all. ``write`` returns only after that: a record survives even a power loss.
- ``interval`` (the default): the caller appends its line with ``write(2)`` under a lock and
  returns; the writer thread ``fdatasync``s every ``sync_interval`` seconds. A record is in the
  kernel before the daemon gets its answer, so it survives any crash of the plugin (kill -9 of a
  worker or of the master); an OS crash or power loss can lose the last ``sync_interval`` seconds.
  One fdatasync costs 0.5-10 ms on common virtual disks, which ``always`` adds to every decision.

Either way, if the journal cannot be written ``write`` raises ``StoreError`` (the Authorizer then
denies). The shipper (``authz.audit_shipper``) copies records into the database later, and at
least once a second while records arrive the writer appends a signed checkpoint of the newest
durable record to ``<state>/checkpoints/<chain>.log`` (``authz.audit_keys``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from authz.audit import AuditEvent
from authz.audit_chain import ChainState, Checkpoint, canonical_event, parse_journal_line
from authz.audit_keys import AuditKey, CheckpointLog
from authz.blocking import about_to_wait
from authz.errors import StoreError
from authz.storage.models import AuditRow

__all__ = [
    "MAX_RECORD_CHARS",
    "JournalAuditSink",
    "Segment",
    "journal_tail_seq",
    "list_segments",
    "new_chain_id",
    "segment_name",
]

log = logging.getLogger(__name__)

SEGMENT_BYTES = 64 * 1024 * 1024
# The largest event a record may carry (its canonical JSON, ASCII). A request whose record would be
# larger is refused like any record the log cannot keep (denied): no real Docker call comes near,
# and the shipper then always reads a whole line (``audit_shipper``).
MAX_RECORD_CHARS = 16 * 1024 * 1024
_SEGMENT_RE = re.compile(r"(?P<chain>.+)\.(?P<first>\d{12})\.jsonl")
_NODE_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# Column widths of the audit table: a record the database would refuse must be refused now, while
# the caller can still be denied, not found later by the shipper when the decision is long made.
_LIMITS = {c.name: int(getattr(c.type, "length", 0)) for c in AuditRow.__table__.columns
           if getattr(c.type, "length", None)}  # fmt: skip


def new_chain_id(node: str) -> str:
    """``<node>:<8 random hex>``; the node is reduced to file-name-safe characters."""
    safe = _NODE_UNSAFE.sub("_", node)[:100] or "node"
    return f"{safe}:{secrets.token_hex(4)}"


def segment_name(chain: str, first_seq: int) -> str:
    return f"{chain}.{first_seq:012d}.jsonl"


@dataclass(frozen=True, slots=True, order=True)
class Segment:
    first_seq: int
    path: Path = field(compare=False)


def list_segments(directory: Path) -> dict[str, list[Segment]]:
    """Every chain with journal segments in ``directory``, its segments in seq order."""
    chains: dict[str, list[Segment]] = {}
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(directory):
            match = _SEGMENT_RE.fullmatch(entry.name)
            if match is not None:
                chains.setdefault(match["chain"], []).append(Segment(int(match["first"]), Path(entry.path)))
    return {chain: sorted(segments) for chain, segments in chains.items()}


def journal_tail_seq(directory: Path, chain: str) -> int:
    """Seq of the last complete record of ``chain`` in the local journal; 0 when there is none.

    ``audit verify`` uses it to tell records that are journaled but not yet shipped from a
    truncated tail.
    """
    for segment in reversed(list_segments(directory).get(chain, [])):
        with contextlib.suppress(OSError), segment.path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 1024 * 1024))
            lines = handle.read().split(b"\n")[:-1]  # the part after the last newline is incomplete
            for line in reversed(lines):
                with contextlib.suppress(ValueError):
                    return parse_journal_line(line).seq
    return 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)  # the new file's directory entry must survive a crash too
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Batch:
    __slots__ = ("canonicals", "done", "error")

    def __init__(self) -> None:
        self.canonicals: list[str] = []
        self.done = threading.Event()
        self.error: BaseException | None = None


class JournalAuditSink:
    """The plugin's ``AuditSink``: durable in the local journal before ``write`` returns.

    Thread-safe. ``journal_path`` (tests) replaces the segment files by one fixed file, e.g.
    ``/dev/full``. ``checkpoints``/``key_dir`` None: no checkpoints (tests of the journal alone).
    """

    def __init__(
        self,
        directory: Path,
        node: str,
        *,
        checkpoints: CheckpointLog | None = None,
        key_dir: Path | None = None,
        segment_bytes: int = SEGMENT_BYTES,
        checkpoint_interval: float = 1.0,
        write_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        journal_path: Path | None = None,
        sync: str = "always",
        sync_interval: float = 0.1,
    ) -> None:
        if sync not in ("always", "interval"):
            raise ValueError(f"audit journal sync mode must be always or interval, not {sync!r}")
        self.directory = Path(directory)
        self._sync_always = sync == "always"
        self._sync_interval = sync_interval
        self._io = threading.Lock()  # interval mode: callers append under it
        self._written: tuple[str, int, str] | None = None  # newest record written (not yet fsync'd)
        self._node = node
        self._checkpoints = checkpoints
        self._key_dir = key_dir
        self._key: AuditKey | None = None
        self._segment_bytes = segment_bytes
        self._interval = checkpoint_interval
        self._timeout = write_timeout
        self._clock = clock
        self._journal_path = journal_path
        self._cond = threading.Condition()
        self._batch = _Batch()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[], None]] = []
        # Writer-thread state (only the writer thread touches these after start).
        self._state: ChainState | None = None
        self._fd = -1
        self._lock_fd = -1
        self._size = 0
        self._durable: tuple[str, int, str] | None = None  # chain, seq, hash of the newest fsync'd record
        self._checkpointed: tuple[str, int] = ("", 0)  # chain, seq of the newest checkpoint
        self._last_checkpoint = 0.0
        self.checkpoint_errors = 0

    # ------------------------------------------------------------ public

    @property
    def chain(self) -> str | None:
        """The chain this process writes now (None before the first write)."""
        state = self._state
        return state.chain if state is not None else None

    @property
    def durable_seq(self) -> int:
        """Seq of the newest record fsync'd in the current chain (0 before any)."""
        durable = self._durable
        return durable[1] if durable is not None and durable[0] == self.chain else 0

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs in the writer thread after every commit (wakes the shipper)."""
        self._listeners.append(callback)

    def write(self, event: AuditEvent) -> None:
        """Journal ``event``; return once it is on disk. ``StoreError`` if it is not."""
        data = event.to_dict()
        for name, limit in _LIMITS.items():
            value = data.get(name)
            if isinstance(value, str) and len(value) > limit:
                raise StoreError(f"audit field {name} is {len(value)} characters long; the log keeps at most {limit}")
        try:
            canonical = canonical_event(data)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"audit event cannot be serialised exactly: {exc}") from exc
        if len(canonical) > MAX_RECORD_CHARS:
            raise StoreError(
                f"audit record is {len(canonical)} characters long; the log keeps at most {MAX_RECORD_CHARS}"
            )
        if not self._sync_always:
            self._append_now(canonical)
            return
        with self._cond:
            if self._closed:
                raise StoreError("audit journal is closed")
            self._start_thread()
            batch = self._batch
            batch.canonicals.append(canonical)
            self._cond.notify()
        about_to_wait()  # the group fsync: the worker's other connections join this batch meanwhile
        if not batch.done.wait(self._timeout):
            # Fail closed: unconfirmed means possibly unrecorded (a hung disk); deny rather than wait on.
            raise StoreError(f"audit journal did not confirm the record within {self._timeout:g}s")
        if batch.error is not None:
            raise StoreError(f"audit journal cannot be written: {batch.error}") from batch.error

    def _start_thread(self) -> None:
        if self._thread is None:  # callers hold self._cond
            target = self._run if self._sync_always else self._run_syncer
            self._thread = threading.Thread(target=target, name="audit-journal", daemon=True)
            self._thread.start()

    def _append_now(self, canonical: str) -> None:
        """Interval mode: the line is in the kernel when this returns (see the module docstring)."""
        with self._cond:
            if self._closed:
                raise StoreError("audit journal is closed")
            self._start_thread()
        with self._io:
            if self._closed:  # closed meanwhile: its chain is released (close takes _io to do it)
                raise StoreError("audit journal is closed")
            state: ChainState | None = None
            before: tuple[int, str] | None = None
            try:
                state = self._open()
                if self._journal_path is None and self._size >= self._segment_bytes:
                    os.fdatasync(self._fd)  # the old segment is complete and durable before we leave it
                    self._rotate(state)
                before = (state.seq, state.last_hash)
                line = state.append(canonical)[2]
                _write_all(self._fd, line)
                self._size += len(line)
                self._written = (state.chain, state.seq, state.last_hash)
            except Exception as exc:
                log.error("audit journal write failed: %s", exc)
                if state is not None and before is not None:
                    state.seq, state.last_hash = before
                    self._undo()
                raise StoreError(f"audit journal cannot be written: {exc}") from exc

    def _run_syncer(self) -> None:
        """Interval mode: fdatasync what was written, then checkpoint and wake the shipper."""
        while True:
            with self._cond:
                if not self._closed:
                    self._cond.wait(self._sync_interval)
                closing = self._closed
            self._sync_written()
            if self._checkpoint_wait() == 0.0 or (closing and self._durable is not None):
                self._checkpoint()
            if closing:
                return

    def _sync_written(self) -> None:
        with self._io:
            written = self._written
            if written is None or written == self._durable or self._fd < 0:
                return
            fd = os.dup(self._fd)  # a rotation may close the original while we sync
        try:
            os.fdatasync(fd)
        except OSError as exc:
            log.error("audit journal fdatasync failed: %s", exc)
            return
        finally:
            os.close(fd)
        self._durable = written
        for callback in self._listeners:
            callback()

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, write a last checkpoint, release the chain (others may ship it)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            # Under _io: a caller past its closed check finishes its line first (it is in the file
            # before the chain's lock goes, so the shipper that claims the chain sees it), and no
            # line is written through a descriptor closed here, or one another thread reopened.
            with self._io:
                self._release()

    # ------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._batch.canonicals and not self._closed:
                    wait = self._checkpoint_wait()
                    if wait == 0.0:
                        break
                    self._cond.wait(wait)
                batch, self._batch = self._batch, _Batch()
                closing = self._closed and not batch.canonicals
            if batch.canonicals:
                self._commit(batch)
                for callback in self._listeners:
                    callback()
            if self._checkpoint_wait() == 0.0 or (closing and self._durable is not None):
                self._checkpoint()
            if closing:
                return

    def _checkpoint_wait(self) -> float | None:
        """Seconds until a checkpoint is due; None when none is pending; 0.0 when due now."""
        if not self._checkpoint_pending():
            return None
        return max(0.0, self._last_checkpoint + self._interval - self._clock())

    def _checkpoint_pending(self) -> bool:
        durable = self._durable
        if self._checkpoints is None or durable is None:
            return False
        return durable[0] != self._checkpointed[0] or durable[1] > self._checkpointed[1]

    def _commit(self, batch: _Batch) -> None:
        state: ChainState | None = None
        before: tuple[int, str] | None = None
        try:
            state = self._open()
            if self._journal_path is None and self._size >= self._segment_bytes:
                self._rotate(state)
            before = (state.seq, state.last_hash)
            data = b"".join(state.append(canonical)[2] for canonical in batch.canonicals)
            _write_all(self._fd, data)
            os.fdatasync(self._fd)
            self._size += len(data)
            self._durable = (state.chain, state.seq, state.last_hash)
        except Exception as exc:
            log.error("audit journal write failed: %s", exc)
            batch.error = exc
            if state is not None and before is not None:
                state.seq, state.last_hash = before
                self._undo()
        finally:
            batch.done.set()

    def _undo(self) -> None:
        """Cut a failed append back off the segment, or give the chain up if that fails too."""
        try:
            os.ftruncate(self._fd, self._size)
            os.fdatasync(self._fd)
        except OSError as exc:
            # The file may hold lines nobody was told about; a new chain keeps the seqs unambiguous.
            log.error("audit journal: cannot cut back a failed write (%s); starting a new chain", exc)
            self._release()

    def _open(self) -> ChainState:
        if self._state is not None and self._fd >= 0:
            return self._state
        if self._journal_path is not None:
            self._state = ChainState(new_chain_id(self._node))
            self._fd = os.open(self._journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._size = os.fstat(self._fd).st_size
            return self._state
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        state = ChainState(new_chain_id(self._node))
        lock_fd = os.open(self.directory / f"{state.chain}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held for life: no shipper claims a live chain
        except OSError:
            os.close(lock_fd)
            raise
        self._lock_fd, self._state = lock_fd, state
        self._open_segment(state)
        return state

    def _open_segment(self, state: ChainState) -> None:
        path = self.directory / segment_name(state.chain, state.seq + 1)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size
        _fsync_dir(self.directory)

    def _rotate(self, state: ChainState) -> None:
        """Continue the chain (seq and hash) in a new segment; the shipper deletes the old one."""
        os.close(self._fd)
        self._fd = -1
        self._open_segment(state)

    def _release(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)  # closing the lock file releases the flock
        self._fd = self._lock_fd = -1
        self._state = None

    def _checkpoint(self) -> None:
        durable, log_ = self._durable, self._checkpoints
        if durable is None or log_ is None or not self._checkpoint_pending():
            return
        chain, seq, digest = durable
        self._last_checkpoint = self._clock()
        try:
            if self._key is None:
                if self._key_dir is None:
                    return
                self._key = AuditKey.load_or_create(self._key_dir)
            log_.append(self._key.sign(Checkpoint("checkpoint", chain, seq, digest, self._clock())))
            self._checkpointed = (chain, seq)
        except Exception as exc:
            # Fail open: the records are durable already; a missing checkpoint weakens only the
            # evidence for the last seconds, and verify reports the gap. Retried next interval.
            self.checkpoint_errors += 1
            log.error("audit checkpoint failed: %s", exc)
