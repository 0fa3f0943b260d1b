"""Tamper evidence for the audit log: chain hashing, journal lines, checkpoints and verification.

Pure (the standard library, and orjson to write and read the same text faster). Every writer
process owns one *chain* (``<node>:<8 hex>``); its records are numbered ``seq`` 1, 2, 3 … and
each record's hash covers its predecessor's hash, the chain id, its seq and the canonical JSON
of the event::

    record_hash = sha256(prev_hash "\\n" chain "\\n" seq "\\n" canonical_event)

so altering, deleting, reordering or renumbering a record breaks every later link. Checkpoints are
signed ``(chain, seq, record_hash, time)`` lines kept *outside* the database; they catch a rewrite of
the whole chain and a truncated tail. Signing is done at the edge (``authz.audit_keys``); here a
checkpoint only knows its payload bytes and is checked through a callback.

``verify_chain`` walks one chain's rows in seq order together with its checkpoints (both streamed,
constant memory) and returns a ``ChainReport`` naming the first broken link.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "GENESIS",
    "Anchor",
    "Break",
    "ChainReport",
    "ChainRow",
    "ChainState",
    "Checkpoint",
    "JournalRecord",
    "canonical_event",
    "parse_checkpoint",
    "parse_journal_line",
    "record_hash",
    "verify_chain",
]

GENESIS = "0" * 64  # prev_hash of seq 1
_NEIGHBOURS = 3  # how far a misplaced record is looked for when naming a break "reordered"

# Break kinds (the words `authzctl audit verify` prints).
ALTERED = "altered"
DELETED = "deleted"
REORDERED = "reordered"
TRUNCATED = "truncated"
BAD_SIGNATURE = "bad checkpoint signature"
BAD_CHECKPOINT = "bad checkpoint"
UNSIGNED_ANCHOR = "unsigned anchor"


def canonical_event(event: Mapping[str, Any]) -> str:
    """The one JSON text of an event that is hashed: sorted keys, no spaces, ASCII, no NaN.

    ``time`` is always a float and ``roles``/``warnings`` lists, so the text read back from the
    database (REAL, JSON columns) is the text that was hashed when the record was written.
    Raises ``ValueError`` for values JSON cannot carry exactly (NaN, infinity).
    """
    if not _in_stored_types(event):  # AuditEvent.to_dict gives them already: no copy then
        data = dict(event)
        data["time"] = float(data["time"])
        data["roles"] = list(data.get("roles") or ())
        data["warnings"] = list(data.get("warnings") or ())
        data["detail"] = dict(data.get("detail") or {})
        event = data
    fast = _canonical_by_orjson(event)
    return fast if fast is not None else _encode_canonical(event)


def _in_stored_types(event: Mapping[str, Any]) -> bool:
    return (
        isinstance(event, dict)
        and type(event.get("time")) is float
        and type(event.get("roles")) is list
        and type(event.get("warnings")) is list
        and type(event.get("detail")) is dict
    )


# What json.dumps(sort_keys=True, separators=(",", ":"), allow_nan=False, default=str) writes,
# without building an encoder for every record.
_encode_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False, default=str).encode


_FAST_TIME_RANGE = (1.0, 1e15)  # both encoders write these floats as the same plain decimal
# orjson holds about 16 bytes per byte it writes and 13 per byte it reads until it returns (a 16 MiB
# line took 277 MB): it gets the records and lines of everyday size, the standard codec the rest.
_FAST_MAX_CHARS = 16 * 1024
_FAST_MAX_LINE = 256 * 1024
# orjson reads an integer beyond 64 bits as a float: the record would change, and with it its hash.
# Such an integer has at least 19 digits; a line with a run of them (a hash of zeros) goes to json.
# Found by mapping every digit to "0" and everything else to "x", then looking for 19 zeros: the
# regular expression [0-9]{19} took 15 µs of the shipper's 55 per record, this about 1.
_DIGITS_TO_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x78 for b in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def _has_long_digit_run(line: bytes) -> bool:
    return _LONG_DIGIT_RUN in line.translate(_DIGITS_TO_ZEROS)


def _canonical_by_orjson(event: Mapping[str, Any]) -> str | None:
    """``_encode_canonical(event)`` written by orjson (2 µs instead of 19-31 for a 0.6-2.3 KB
    record), or None when the text might differ and the standard encoder must write it.

    The text is hashed and recomputed by ``audit verify``, so it must be the same bytes. orjson
    writes the same JSON for strings, ints, booleans, nulls and lists of strings, except: non-ASCII
    (raw UTF-8; we escape it), DEL (raw; we write ``\\u007f``), floats outside plain notation
    (``1e-7`` vs ``1e-07``), NaN (``null``; we refuse it), ints beyond 64 bits (it refuses) and
    other types (its own formats; we use ``str``). Only the event's top level of those plain
    types, an empty ``detail`` (the default audit level), a ``time`` in plain notation and at most
    ``_FAST_MAX_CHARS`` characters take this path, and its output is checked for the two bytes it
    would write differently.
    ``test_audit_chain.py`` compares both encoders on generated events.
    """
    low, high = _FAST_TIME_RANGE
    chars = 0
    for key, value in event.items():
        kind = type(value)
        if kind is str:
            chars += len(value)
            continue
        if value is None or kind is bool or kind is int:
            continue
        if kind is list:
            if all(type(item) is str for item in value):
                chars += sum(map(len, value))
                continue
        elif kind is float:
            if key == "time" and low <= value < high:
                continue
        elif kind is dict and not value:
            continue
        return None
    if chars > _FAST_MAX_CHARS:
        return None
    try:
        text = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError: an int beyond 64 bits, a non-str key
        return None
    if not text.isascii() or b"\x7f" in text:
        return None
    return text.decode("ascii")


def record_hash(prev_hash: str, chain: str, seq: int, canonical: str) -> str:
    """sha256 hex over the predecessor's hash, the chain id, the seq and the canonical event."""
    return hashlib.sha256(f"{prev_hash}\n{chain}\n{seq}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One record as it is journaled and shipped: its place in the chain and the event fields."""

    chain: str
    seq: int
    prev_hash: str
    record_hash: str
    event: dict[str, Any]


class ChainState:
    """The head of one chain: hands out the next seq and hash. Not thread-safe (one writer)."""

    __slots__ = ("_line_start", "chain", "last_hash", "seq")

    def __init__(self, chain: str, seq: int = 0, last_hash: str = GENESIS) -> None:
        self.chain = chain
        self.seq = seq
        self.last_hash = last_hash
        self._line_start = f'{{"chain":{json.dumps(chain)},"seq":'  # the same for every record: encoded once

    def append(self, canonical: str) -> tuple[int, str, bytes]:
        """Advance the head over an event given as ``canonical_event`` text.

        Returns (seq, record_hash, journal line ending in a newline).
        """
        seq = self.seq + 1
        digest = record_hash(self.last_hash, self.chain, seq, canonical)
        line = (
            f'{self._line_start}{seq},"prev_hash":"{self.last_hash}","record_hash":"{digest}","event":{canonical}}}\n'
        )
        self.seq, self.last_hash = seq, digest
        return seq, digest, line.encode()


def parse_journal_line(line: bytes) -> JournalRecord:
    """A journal line back into a record; ``ValueError`` if it is not one we wrote."""
    if len(line) > _FAST_MAX_LINE or _has_long_digit_run(line):
        data = json.loads(line)
    else:
        try:
            data = orjson.loads(line)  # 7 µs instead of 21 for a 2 KB line (the audit shipper reads every one)
        except orjson.JSONDecodeError:
            data = json.loads(line)  # what orjson refuses and json reads (NaN, a lone surrogate escape), or the error
    if not isinstance(data, dict) or not isinstance(data.get("event"), dict):
        raise ValueError("journal line is not a record object")
    chain, seq = data.get("chain"), data.get("seq")
    if not isinstance(chain, str) or isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError("journal line has no valid chain/seq")
    return JournalRecord(chain, seq, str(data.get("prev_hash")), str(data.get("record_hash")), data["event"])


# ---------------------------------------------------------------- checkpoints


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement "chain C had record ``seq`` with hash H at ``time``".

    ``kind`` is ``checkpoint`` (written by the journal writer) or ``anchor`` (written by prune:
    records up to ``seq`` were deleted on purpose).
    """

    kind: str
    chain: str
    seq: int
    record_hash: str
    time: float
    kid: str = ""
    sig: str = ""  # base64 Ed25519 signature over payload()

    def payload(self) -> bytes:
        body = {"kind": self.kind, "chain": self.chain, "seq": self.seq, "record_hash": self.record_hash,
                "time": self.time}  # fmt: skip
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_line(self) -> bytes:
        body = {"kind": self.kind, "chain": self.chain, "seq": self.seq, "record_hash": self.record_hash,
                "time": self.time, "kid": self.kid, "sig": self.sig}  # fmt: skip
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def parse_checkpoint(line: str) -> Checkpoint:
    """One checkpoint log line; ``ValueError`` when malformed."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("checkpoint line is not an object")
    kind, chain, seq, digest = data.get("kind"), data.get("chain"), data.get("seq"), data.get("record_hash")
    moment, kid, sig = data.get("time"), data.get("kid", ""), data.get("sig", "")
    if kind not in ("checkpoint", "anchor") or not isinstance(chain, str) or not isinstance(digest, str):
        raise ValueError("checkpoint line lacks kind/chain/record_hash")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError("checkpoint line has no valid seq")
    if isinstance(moment, bool) or not isinstance(moment, int | float) or not math.isfinite(moment):
        raise ValueError("checkpoint line has no valid time")
    if not isinstance(kid, str) or not isinstance(sig, str):
        raise ValueError("checkpoint line has no valid kid/sig")
    return Checkpoint(kind, chain, seq, digest, float(moment), kid, sig)


# ---------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class ChainRow:
    """One stored record as verification reads it (the event fields as the database returns them)."""

    id: int
    seq: int
    prev_hash: str | None
    record_hash: str | None
    event: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where a pruned chain now starts: the last deleted record's seq and hash."""

    chain: str
    seq: int
    record_hash: str


@dataclass(frozen=True, slots=True)
class Break:
    """The first broken link of a chain."""

    kind: str  # altered | deleted | reordered | truncated | bad checkpoint signature | …
    seq: int
    record_id: int | None
    detail: str

    def describe(self) -> str:
        where = f"seq {self.seq:,}" + (f" (record id {self.record_id})" if self.record_id is not None else "")
        return f"{self.kind} at {where}: {self.detail}"


@dataclass(slots=True)
class ChainReport:
    chain: str
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_checkpoint_seq: int | None = None
    checkpoints: int = 0
    anchor: Anchor | None = None
    anchor_signed: bool = False
    problem: Break | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        checkpoint = (f"last checkpoint seq {self.last_checkpoint_seq:,}" if self.last_checkpoint_seq is not None
                      else "no checkpoint")  # fmt: skip
        parts = [f"chain {self.chain}: {self.records:,} records", checkpoint]
        if self.anchor is not None:
            parts.append(f"pruned up to seq {self.anchor.seq:,}")
        parts.append("ok" if self.problem is None else f"BROKEN: {self.problem.describe()}")
        return ", ".join(parts) + "".join(f" ({note})" for note in self.notes)

    def to_dict(self) -> dict[str, Any]:
        problem = None
        if self.problem is not None:
            problem = {"kind": self.problem.kind, "seq": self.problem.seq, "record_id": self.problem.record_id,
                       "detail": self.problem.detail}  # fmt: skip
        return {"chain": self.chain, "ok": self.ok, "records": self.records, "first_seq": self.first_seq,
                "last_seq": self.last_seq, "checkpoints": self.checkpoints,
                "last_checkpoint_seq": self.last_checkpoint_seq,
                "anchor_seq": self.anchor.seq if self.anchor else None, "problem": problem,
                "notes": list(self.notes)}  # fmt: skip


SignatureCheck = Callable[[Checkpoint], bool]


def _misplaced(row: ChainRow, chain: str, canonical: str) -> int | None:
    """The nearby seq under which the row's own hash holds, if any (it was moved there from)."""
    for delta in range(1, _NEIGHBOURS + 1):
        for seq in (row.seq - delta, row.seq + delta):
            if seq > 0 and record_hash(row.prev_hash or "", chain, seq, canonical) == row.record_hash:
                return seq
    return None


def _check_row(row: ChainRow, chain: str, prev: str, last_id: int) -> Break | None:
    try:
        canonical = canonical_event(row.event)
    except (ValueError, TypeError, KeyError) as exc:
        return Break(ALTERED, row.seq, row.id, f"the record cannot be read back as an event ({exc})")
    if record_hash(prev, chain, row.seq, canonical) == row.record_hash and row.prev_hash == prev:
        if row.id < last_id:
            return Break(REORDERED, row.seq, row.id, f"stored before its predecessor (record id {last_id})")
        return None
    if record_hash(row.prev_hash or "", chain, row.seq, canonical) != row.record_hash:
        moved_from = _misplaced(row, chain, canonical)
        if moved_from is not None:
            return Break(REORDERED, row.seq, row.id, f"this record was written as seq {moved_from:,}")
        return Break(ALTERED, row.seq, row.id, "the stored fields do not match the record's hash")
    return Break(ALTERED, row.seq, row.id,
                 "prev_hash does not link to the preceding record (it or its predecessor was replaced)")  # fmt: skip


def _check_anchor(report: ChainReport, anchor: Anchor, signed: Iterable[Checkpoint], check: SignatureCheck) -> None:
    for cp in signed:
        if cp.seq == anchor.seq and cp.record_hash == anchor.record_hash and check(cp):
            report.anchor_signed = True
            return
    report.notes.append("anchor not signed on this host")


def verify_chain(
    chain: str,
    rows: Iterable[ChainRow],
    checkpoints: Iterable[Checkpoint],
    check_signature: SignatureCheck,
    anchor: Anchor | None = None,
    *,
    require_signed_anchor: bool = False,
    journaled_through: int = 0,
    pending_since: float = math.inf,
) -> ChainReport:
    """Walk ``rows`` (this chain's records in seq order) against ``checkpoints`` (in file order).

    Stops at the first broken link, in seq order. ``anchor``: the chain was pruned up to
    ``anchor.seq``; rows at or below it are ignored and the walk starts from its hash. Anchor lines
    among ``checkpoints`` may vouch for the anchor; ``require_signed_anchor`` makes an unvouched
    anchor a break. ``journaled_through``/``pending_since``: the local journal holds records up to
    that seq, so a checkpoint beyond the stored tail written at or after ``pending_since`` names
    records still on their way to the database, not a truncation. Older ones are truncation: the
    shipper ships within seconds, and the live journal keeps records it already shipped.
    """
    report = ChainReport(chain, anchor=anchor)
    floor = anchor.seq if anchor else 0
    prev = anchor.record_hash if anchor else GENESIS
    expected = floor + 1
    last_id = -1
    anchors: list[Checkpoint] = []
    stream = _checkpoint_stream(chain, checkpoints, anchors, report, check_signature, anchor)
    item = next(stream, None)
    for row in rows:
        if row.seq <= floor:
            continue  # below the anchor: should be gone; verification starts at the anchor
        # Checkpoints before this row name records that are missing or were already matched.
        while item is not None and item[0].seq < row.seq:
            if item[1] is not None:
                report.problem = item[1]
                return report
            if item[0].seq >= expected:
                break  # names a missing record: reported as deleted below
            item = next(stream, None)
        if row.seq > expected:
            report.problem = Break(DELETED, expected, row.id,
                                   f"records {expected:,}..{row.seq - 1:,} are missing (next present is seq "
                                   f"{row.seq:,})")  # fmt: skip
            return report
        problem = _check_row(row, chain, prev, last_id)
        if problem is not None:
            report.problem = problem
            return report
        while item is not None and item[0].seq == row.seq:
            if item[1] is not None:
                report.problem = item[1]
                return report
            if item[0].record_hash != row.record_hash:
                report.problem = Break(ALTERED, row.seq, row.id,
                                       "differs from the signed checkpoint (the chain was rewritten)")  # fmt: skip
                return report
            item = next(stream, None)
        report.records += 1
        report.first_seq = report.first_seq or row.seq
        report.last_seq = row.seq
        prev, expected, last_id = row.record_hash or "", row.seq + 1, row.id
    unshipped = 0
    while item is not None and item[1] is None and item[0].seq <= journaled_through and item[0].time >= pending_since:
        unshipped = journaled_through - (expected - 1)
        item = next(stream, None)
    if unshipped > 0:
        report.notes.append(f"{unshipped:,} records journaled, not yet in the database")
    if item is not None:
        report.problem = item[1] or Break(TRUNCATED, item[0].seq, None,
                                          f"a signed checkpoint names seq {item[0].seq:,} but the log ends at "
                                          f"seq {expected - 1:,}")  # fmt: skip
        return report
    if anchor is not None:
        _check_anchor(report, anchor, anchors, check_signature)
        if require_signed_anchor and not report.anchor_signed:
            report.problem = Break(UNSIGNED_ANCHOR, anchor.seq, None,
                                   "no signed checkpoint or anchor line vouches for the prune anchor")  # fmt: skip
    return report


_Item = tuple[Checkpoint, Break | None]


def _checkpoint_stream(
    chain: str,
    checkpoints: Iterable[Checkpoint],
    anchors: list[Checkpoint],
    report: ChainReport,
    check: SignatureCheck,
    anchor: Anchor | None,
) -> Iterator[_Item]:
    """Checkpoints above the anchor in increasing seq order, each with the break it shows (if any).

    The stream ends after the first bad line. Anchor lines are collected into ``anchors``.
    """
    last = -1
    floor = anchor.seq if anchor else 0
    for cp in checkpoints:
        if cp.kind == "malformed":
            yield cp, Break(BAD_CHECKPOINT, cp.seq, None, "a line of the checkpoint log is not a checkpoint")
            return
        if cp.chain != chain:
            yield cp, Break(BAD_CHECKPOINT, cp.seq, None, f"a line of this chain's log names chain {cp.chain}")
            return
        if not check(cp):
            yield cp, Break(BAD_SIGNATURE, cp.seq, None, f"{cp.kind} signature does not verify (kid {cp.kid!r})")
            return
        if cp.kind == "anchor":
            anchors.append(cp)
            continue
        if cp.seq <= last:
            yield cp, Break(BAD_CHECKPOINT, cp.seq, None, f"checkpoint seq {cp.seq:,} follows seq {last:,}")
            return
        last = cp.seq
        report.checkpoints += 1
        report.last_checkpoint_seq = cp.seq
        if anchor is not None and cp.seq == floor and cp.record_hash != anchor.record_hash:
            yield cp, Break(ALTERED, cp.seq, None, "the prune anchor differs from the signed checkpoint")
            return
        if cp.seq > floor:
            yield cp, None
