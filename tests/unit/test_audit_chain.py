"""The pure chain logic (authz.audit_chain) and the request-level redaction (authz.audit)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tracemalloc
from collections.abc import Iterable
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz import audit_chain
from authz.audit import AuditEvent, chain_hash, redact_uri, request_detail
from authz.audit_chain import (
    Anchor,
    ChainRow,
    ChainState,
    Checkpoint,
    canonical_event,
    parse_checkpoint,
    parse_journal_line,
    verify_chain,
)
from authz.classify import classify
from authz.request import DockerRequest

CHAIN = "node-a:0badcafe"
SECRET = b"test-signing-secret"


def sign(cp: Checkpoint) -> Checkpoint:
    """A stand-in for Ed25519 (the real one is tested in integration): a keyed hash."""
    cp = dataclasses.replace(cp, kid="k1", sig="")
    return dataclasses.replace(cp, sig=hashlib.sha256(SECRET + cp.payload()).hexdigest())


def check(cp: Checkpoint) -> bool:
    return cp.kid == "k1" and cp.sig == hashlib.sha256(SECRET + dataclasses.replace(cp, sig="").payload()).hexdigest()


def event(i: int) -> AuditEvent:
    return AuditEvent(time=1_700_000_000 + i, request_id=f"r{i}", node="node-a", phase="request", user="bob",
                      source="token", roles=("developer",), action="container:start", method="POST",
                      uri=f"/v1.41/containers/c{i}/start", object=f"c{i}", allow=i % 3 != 0, mode="enforce",
                      rule="roles.developer.allow[0]", role="developer", reason="allowed", message="",
                      detail={"n": i})  # fmt: skip


def build(n: int, checkpoint_every: int = 10) -> tuple[list[ChainRow], list[Checkpoint]]:
    """``n`` rows as the database returns them (after a JSON round trip) and their checkpoints."""
    state = ChainState(CHAIN)
    rows, checkpoints = [], []
    for i in range(1, n + 1):
        _seq, _digest, line = state.append(canonical_event(event(i).to_dict()))
        record = parse_journal_line(line)
        rows.append(ChainRow(1000 + i, record.seq, record.prev_hash, record.record_hash, record.event))
        if i % checkpoint_every == 0:
            checkpoints.append(sign(Checkpoint("checkpoint", CHAIN, record.seq, record.record_hash, 1.0 + i)))
    return rows, checkpoints


def run(rows: Iterable[ChainRow], checkpoints: Iterable[Checkpoint], anchor: Anchor | None = None, **kw: object):  # type: ignore[no-untyped-def]
    return verify_chain(CHAIN, rows, checkpoints, check, anchor, **kw)  # type: ignore[arg-type]


def with_event(row: ChainRow, **changes: object) -> ChainRow:
    return dataclasses.replace(row, event={**row.event, **changes})


def test_untouched_chain_passes_with_summary() -> None:
    rows, cps = build(25)
    report = run(rows, cps)
    assert report.ok, report.summary()
    assert (report.records, report.first_seq, report.last_seq, report.last_checkpoint_seq) == (25, 1, 25, 20)
    assert report.summary() == f"chain {CHAIN}: 25 records, last checkpoint seq 20, ok"


def test_chain_hash_of_the_core_matches_the_journal() -> None:
    state = ChainState(CHAIN)
    _seq, digest, _line = state.append(canonical_event(event(1).to_dict()))
    assert chain_hash("0" * 64, event(1), CHAIN, 1) == digest
    assert chain_hash("0" * 64, event(1), CHAIN, 2) != digest  # the seq is covered
    assert chain_hash("0" * 64, event(1), "other:00000000", 1) != digest  # the chain is covered


def test_canonical_form_survives_the_database_round_trip() -> None:
    data = event(1).to_dict()
    as_stored = json.loads(json.dumps(data)) | {"time": float(data["time"])}  # REAL column, JSON columns
    assert canonical_event(data) == canonical_event(as_stored)
    with pytest.raises(ValueError, match="Out of range"):
        canonical_event(data | {"time": float("nan")})


def test_canonical_form_is_the_sorted_compact_json_of_the_stored_types() -> None:
    """Events already in the stored types are encoded as they are; others are converted first
    (a copy: the caller's mapping is left alone). Both give the one text."""
    stored = event(1).to_dict() | {"time": 1700000001.5, "detail": {"b": 1, "a": [2]}}
    expected = json.dumps(stored, sort_keys=True, separators=(",", ":"), allow_nan=False)
    assert canonical_event(stored) == expected
    loose = stored | {"time": int(stored["time"]), "roles": tuple(stored["roles"]), "warnings": None}
    converted = stored | {"time": float(int(stored["time"])), "warnings": []}
    assert canonical_event(loose) == json.dumps(converted, sort_keys=True, separators=(",", ":"))
    assert loose["roles"] == tuple(stored["roles"])  # not modified
    assert canonical_event(MappingProxyType(stored)) == expected  # any mapping, not only a dict


# Mostly ASCII strings (the fast path takes only ASCII output) with what the two encoders could
# write differently: control bytes, DEL, quotes, backslashes, and now and then non-ASCII and
# lone surrogates.
_TEXT = st.text(st.one_of(st.characters(max_codepoint=0x7F), st.sampled_from('\x00\x1f\x7f"\\/')))
_TEXT = _TEXT | st.text(st.sampled_from("a\x7f\x80\u2028\ud800\udfff"), max_size=3)
_OPTIONAL_TEXT = st.none() | _TEXT
_EVENTS = st.fixed_dictionaries({
    "time": st.floats() | st.floats(1.0, 1e15),
    "request_id": _TEXT, "node": _TEXT, "phase": _TEXT, "user": _OPTIONAL_TEXT, "source": _TEXT,
    "roles": st.lists(_TEXT, max_size=3), "action": _TEXT, "method": _TEXT, "uri": _TEXT,
    "object": _OPTIONAL_TEXT, "allow": st.booleans(), "mode": _TEXT, "rule": _OPTIONAL_TEXT,
    "role": _OPTIONAL_TEXT, "reason": _TEXT, "message": _TEXT, "warnings": st.lists(_TEXT, max_size=2),
    "error": _OPTIONAL_TEXT, "body_digest": _OPTIONAL_TEXT, "token_id": _OPTIONAL_TEXT,
    "status_code": st.none() | st.integers() | st.integers(-(2**70), 2**70),
    "detail": st.just({}) | st.dictionaries(_TEXT, st.integers() | st.floats() | _TEXT, max_size=2),
})  # fmt: skip
_STANDARD = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False, default=str).encode


@settings(max_examples=600, deadline=None)
@given(_EVENTS)
def test_the_canonical_text_is_the_standard_encoders_whichever_encoder_writes_it(stored: dict[str, object]) -> None:
    """orjson writes most records (``_canonical_by_orjson``); the hashed text must stay the bytes
    the standard library's encoder writes, or every chain written before would fail to verify."""
    try:
        expected = _STANDARD(stored)
    except ValueError:  # NaN or infinity: refused either way
        with pytest.raises(ValueError, match="Out of range float"):
            canonical_event(stored)
        return
    assert canonical_event(stored) == expected


def test_a_plain_record_is_written_by_orjson_and_the_exceptions_by_the_standard_encoder() -> None:
    """The fast path is taken for the records the plugin writes at the default level; the test
    above would pass with it never taken, this one would not."""
    plain = event(1).to_dict() | {"detail": {}, "time": 1_795_971_368.6071634}
    assert audit_chain._canonical_by_orjson(plain) == _STANDARD(plain)
    for odd in ({"uri": "/caf\u00e9"}, {"reason": "a\x7fb"}, {"time": 1e-7}, {"status_code": 2**64},
                {"detail": {"n": 1}}, {"user": "\ud800"}, {"message": "x" * 20_000}):  # fmt: skip
        assert audit_chain._canonical_by_orjson(plain | odd) is None, odd
        assert canonical_event(plain | odd) == _STANDARD(plain | odd)


def test_a_large_record_is_written_and_read_without_orjsons_buffers() -> None:
    """orjson holds 13-16 bytes per byte until it returns (a 16 MiB payload took 277 MB): a
    record near the 16 MiB bound must not cost that when it is written or shipped."""
    big = event(1).to_dict() | {"detail": {}, "message": "x" * (4 * 1024 * 1024)}
    tracemalloc.start()
    try:
        text = canonical_event(big)
        _seq, _digest, line = ChainState(CHAIN).append(text)
        record = parse_journal_line(line)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert record.event["message"] == big["message"]
    assert peak < 6 * len(line), f"peak {peak / len(line):.1f} bytes per byte of the line"


def test_a_journal_line_orjson_refuses_is_read_by_the_standard_decoder() -> None:
    state = ChainState(CHAIN)
    text = canonical_event(event(1).to_dict() | {"user": "\ud800"})  # written as the escape \\ud800
    _seq, _digest, line = state.append(text)
    record = parse_journal_line(line)
    assert record.event["user"] == "\ud800"
    with pytest.raises(ValueError, match="Expecting value"):
        parse_journal_line(b'{"chain": "c", "seq": 1, "event": [}')


@pytest.mark.parametrize("number", [2**64, 2**70, -(2**63) - 1, 10**30, 2**64 - 1, -(2**63), 123])
def test_a_journal_line_keeps_its_integers_beyond_64_bits(number: int) -> None:
    """orjson reads them as floats; a float in their place fails the record's hash at verify."""
    state = ChainState(CHAIN)
    text = canonical_event(event(1).to_dict() | {"detail": {"memory": number}, "status_code": number})
    _seq, _digest, line = state.append(text)
    record = parse_journal_line(line)
    assert record.event["detail"]["memory"] == number
    assert type(record.event["detail"]["memory"]) is int
    assert record.event["status_code"] == number
    assert type(record.event["status_code"]) is int


@pytest.mark.parametrize(
    ("field", "value"),
    [("allow", False), ("user", "mallory"), ("roles", ["admin"]), ("time", 1.5), ("detail", {"n": 99})],
)
def test_altered_field_is_detected_at_its_record(field: str, value: object) -> None:
    rows, cps = build(20)
    rows[6] = with_event(rows[6], **{field: value})
    report = run(rows, cps)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq, report.problem.record_id) == ("altered", 7, 1007)
    assert report.records == 6


def test_deleted_record_is_detected() -> None:
    rows, cps = build(20)
    del rows[9]
    report = run(rows, cps)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq, report.problem.record_id) == ("deleted", 10, 1011)
    assert "10..10 are missing" in report.problem.detail


def test_deleted_first_records_are_detected() -> None:
    rows, cps = build(5)
    report = run(rows[2:], cps)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("deleted", 1)


def test_records_swapped_between_ids_are_reordered() -> None:
    rows, cps = build(20)
    a, b = rows[4], rows[5]
    rows[4], rows[5] = dataclasses.replace(a, id=b.id), dataclasses.replace(b, id=a.id)
    report = run(rows, cps)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq, report.problem.record_id) == ("reordered", 6, 1005)


def test_records_with_swapped_seq_numbers_are_reordered() -> None:
    rows, cps = build(20)
    a, b = rows[4], rows[5]
    rows[4], rows[5] = dataclasses.replace(b, seq=5), dataclasses.replace(a, seq=6)
    report = run(rows, cps)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("reordered", 5)
    assert "written as seq 6" in report.problem.detail


def test_truncated_tail_is_detected_by_the_checkpoint() -> None:
    rows, cps = build(20)
    report = run(rows[:15], cps)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("truncated", 20)
    assert "ends at seq 15" in report.problem.detail


def test_truncated_tail_still_in_the_journal_is_in_flight_only_while_recent() -> None:
    rows, cps = build(20)
    fresh = run(rows[:15], cps, journaled_through=20, pending_since=0.0)
    assert fresh.ok
    assert "5 records journaled, not yet in the database" in fresh.notes
    stale = run(rows[:15], cps, journaled_through=20, pending_since=1e12)
    assert stale.problem is not None
    assert stale.problem.kind == "truncated"


def test_whole_chain_deleted_is_truncated() -> None:
    _rows, cps = build(20)
    report = run([], cps)
    assert report.problem is not None
    assert report.problem.kind == "truncated"


def test_forged_checkpoint_is_detected() -> None:
    rows, cps = build(20)
    cps[0] = dataclasses.replace(cps[0], seq=11)  # moved, signature no longer matches
    report = run(rows, cps)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("bad checkpoint signature", 11)


def test_rewritten_chain_is_caught_by_its_signed_checkpoint() -> None:
    """An attacker recomputing every hash after an edit leaves a consistent chain; not the checkpoint."""
    rows, cps = build(20)
    state = ChainState(CHAIN)
    rewritten = []
    for row in rows:
        changed = dict(row.event) | ({"allow": True} if row.seq == 3 else {})
        prev = state.last_hash
        seq, digest, _line = state.append(canonical_event(changed))
        rewritten.append(ChainRow(row.id, seq, prev, digest, changed))
    report = run(rewritten, cps)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("altered", 10)
    assert "signed checkpoint" in report.problem.detail


def test_anchor_after_prune_passes_and_a_false_anchor_does_not() -> None:
    rows, cps = build(30)
    anchor_cp = sign(Checkpoint("anchor", CHAIN, 12, rows[11].record_hash or "", 99.0))
    anchor = Anchor(CHAIN, 12, rows[11].record_hash or "")
    report = run(rows[12:], [*cps, anchor_cp], anchor, require_signed_anchor=True)
    assert report.ok, report.summary()
    assert (report.records, report.first_seq, report.anchor_signed) == (18, 13, True)
    assert "pruned up to seq 12" in report.summary()

    unsigned = run(rows[12:], cps, anchor, require_signed_anchor=True)
    assert unsigned.problem is not None
    assert unsigned.problem.kind == "unsigned anchor"
    assert run(rows[12:], cps, anchor).ok  # without --strict only noted
    wrong = run(rows[12:], cps, Anchor(CHAIN, 12, "f" * 64))
    assert wrong.problem is not None
    assert (wrong.problem.kind, wrong.problem.seq) == ("altered", 13)
    early = run(rows[15:], cps, anchor)  # records deleted after the anchor
    assert early.problem is not None
    assert (early.problem.kind, early.problem.seq) == ("deleted", 13)


def test_pruned_chain_without_records_keeps_its_anchor() -> None:
    rows, cps = build(10, checkpoint_every=5)
    assert run([], cps, Anchor(CHAIN, 10, rows[-1].record_hash or "")).ok
    assert run([], cps, Anchor(CHAIN, 8, rows[7].record_hash or "")).problem is not None  # cp 10 is gone


def test_checkpoint_lines_round_trip_and_reject_garbage() -> None:
    cp = sign(Checkpoint("checkpoint", CHAIN, 5, "a" * 64, 12.5))
    assert parse_checkpoint(cp.to_line().decode()) == cp
    for line in ('{"kind":"other"}', "[]", '{"kind":"checkpoint","chain":"c","seq":-1,"record_hash":"x","time":1}'):
        with pytest.raises(ValueError, match="checkpoint line"):
            parse_checkpoint(line)
    malformed = Checkpoint("malformed", CHAIN, 0, "", 0.0)
    rows, _cps = build(5, checkpoint_every=5)
    report = run(rows, [malformed])
    assert report.problem is not None
    assert report.problem.kind == "bad checkpoint"


# ---------------------------------------------------------------- level "request" redaction

JSON = "application/json"


def operation(method: str, uri: str, body: object | None = None):  # type: ignore[no-untyped-def]
    raw = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": JSON, "Content-Length": str(len(raw))} if raw is not None else {}
    return classify(DockerRequest(method, uri, headers, raw))


def test_container_create_detail_keeps_security_fields_and_drops_env_values() -> None:
    body = {
        "Image": "alpine:3",
        "User": "0",
        "Env": ["DB_PASSWORD=hunter2", "MODE=x"],
        "Cmd": ["sh", "-c", "echo supersecret"],
        "HostConfig": {
            "Privileged": True,
            "CapAdd": ["cap_sys_admin"],
            "Binds": ["/etc:/host-etc:ro"],
            "NetworkMode": "host",
        },
    }
    detail = request_detail(operation("POST", "/v1.41/containers/create?name=web", body))
    assert detail["image"] == "alpine:3"
    assert detail["user"] == "0"
    assert detail["privileged"] is True
    assert detail["cap_add"] == ["SYS_ADMIN"]
    assert detail["network_mode"] == "host"
    assert detail["binds"] == [{"source": "/etc", "target": "/host-etc", "read_only": True}]
    assert detail["env_names"] == ["DB_PASSWORD", "MODE"]
    assert detail["query"] == {"name": ["web"]}
    text = json.dumps(detail)
    assert "hunter2" not in text
    assert "supersecret" not in text


def test_secret_and_auth_bodies_are_never_summarised() -> None:
    secret = request_detail(operation("POST", "/v1.41/secrets/create", {"Name": "s", "Data": "c2VjcmV0"}))
    assert secret == {"query": {}}
    auth = operation("POST", "/v1.41/auth", {"username": "u", "password": "p"})
    assert request_detail(auth) == {"query": {}}


def test_secret_query_values_are_redacted() -> None:
    op = operation("POST", "/v1.41/build?t=app&buildargs=%7B%22TOKEN%22%3A%22s3cr3t%22%7D")
    detail = request_detail(op)
    assert detail["query"]["buildargs"] == "<redacted>"
    assert detail["query"]["t"] == ["app"]
    assert "s3cr3t" not in redact_uri("/build?buildargs=s3cr3t&t=x")
    assert redact_uri("/x?%70assword=hunter2") == "/x?%70assword=<redacted>"  # Go decodes the key


def test_volume_and_exec_details_keep_keys_not_values() -> None:
    volume = request_detail(operation("POST", "/v1.41/volumes/create",
                                      {"Name": "v", "DriverOpts": {"o": "username=u,password=pw"}}))  # fmt: skip
    assert volume["options"] == ["o"]
    assert "pw" not in json.dumps(volume)
    exec_ = request_detail(
        operation("POST", "/v1.41/containers/c/exec", {"Cmd": ["mysql", "-pSECRET"], "User": "root"})
    )
    assert exec_["command"] == "mysql"
    assert exec_["arguments"] == 1
    assert "SECRET" not in json.dumps(exec_)
