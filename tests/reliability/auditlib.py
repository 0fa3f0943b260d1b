"""Audit accounting for the reliability tests: what reached the central table, and verify.

Records are counted by ``"<phase>:<request_id>"`` (the Authorizer's correlation id), so the same
request sent three times must appear three times, never twice or four times.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from authz.storage.models import AuditRow


def audit_rows(url: str, uri_contains: str | None = None) -> list[tuple[str, str, bool, str, str, int, str, str]]:
    """(phase, request_id, allow, uri, chain, seq, node, action) of every chained record."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        query = select(AuditRow.phase, AuditRow.request_id, AuditRow.allow, AuditRow.uri, AuditRow.chain,
                       AuditRow.seq, AuditRow.node, AuditRow.action).where(AuditRow.chain.is_not(None))  # fmt: skip
        if uri_contains is not None:
            query = query.where(AuditRow.uri.contains(uri_contains, autoescape=True))
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]  # type: ignore[misc]
    finally:
        engine.dispose()


def audit_total(url: str) -> int:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(AuditRow)) or 0)
    finally:
        engine.dispose()


def counts(url: str) -> Counter[str]:
    return Counter(f"{phase}:{request_id}" for phase, request_id, *_ in audit_rows(url))


def assert_chain_unique(url: str) -> None:
    """No (chain, seq) twice: the shipper's idempotence, checked from the outside."""
    seen = Counter((row[4], row[5]) for row in audit_rows(url))
    twice = [key for key, n in seen.items() if n > 1]
    assert not twice, f"records stored twice: {twice[:5]}"


def wait_for_audit(url: str, expected: Mapping[str, int], timeout: float = 30.0) -> Counter[str]:
    """Wait until every expected record is in the table; return what is there (for exact checks)."""
    deadline = time.monotonic() + timeout
    while True:
        have = counts(url)
        missing = {key: n for key, n in expected.items() if have[key] < n}
        if not missing or time.monotonic() > deadline:
            return have
        time.sleep(0.2)


def assert_exactly_once(url: str, expected: Mapping[str, int], timeout: float = 30.0) -> int:
    """Every decision made is stored exactly as often as it was made; returns how many were checked."""
    have = wait_for_audit(url, expected, timeout)
    wrong = {key: (n, have[key]) for key, n in expected.items() if have[key] != n}
    sample = list(wrong.items())[:5]
    assert not wrong, f"{len(wrong)} request ids whose (decided, stored) counts differ, e.g. {sample}"
    assert_chain_unique(url)
    return sum(expected.values())


def authzctl(env: Mapping[str, str], *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "authzctl"
    return subprocess.run([str(binary), *args], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def verify(env: Mapping[str, str]) -> dict[str, object]:
    """``authzctl audit verify --json`` with ``env``; asserts it passes and returns the document."""
    result = authzctl(env, "audit", "verify", "--json")
    assert result.returncode == 0, f"audit verify failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    document: dict[str, object] = json.loads(result.stdout)
    assert document["ok"] is True
    return document
