"""Sustained load through a real dockerd with the real docker CLI, and its audit accounting.

Every operation carries a marker of its own in the URI (a container name, a label filter), so its
audit records can be found afterwards by (marker, action). ``Load`` runs threads that loop over
the scripts in ``SCRIPTS`` until stopped; ``check_audit`` asserts that each operation that got a
decision from the plugin is in the audit table exactly once, and no operation is there twice.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from auditlib import audit_rows
from stack import Stack

RUN_FLAGS = ("--network", "none", "--user", "1000")
DENIED = "authorization denied by plugin"
# The daemon's answer to the CLI's own API version: the CLI sends it only when its `_ping` was
# refused (it then cannot negotiate down to the daemon's 1.41).
UNNEGOTIATED = "is too new. Maximum supported API version is"


@dataclass(frozen=True)
class Op:
    kind: str
    user: str
    marker: str
    action: str
    rc: int
    stderr: str
    started: float
    ended: float

    @property
    def outcome(self) -> str:
        """allowed, denied (by the policy), denied-audit, denied-retry, denied-store, ping-refused,
        or error."""
        if self.rc == 0:
            return "allowed"
        if DENIED not in self.stderr:
            if UNNEGOTIATED in self.stderr:
                # Its `_ping` was refused during a fault (e.g. the audit log could not be written),
                # and the request itself came after the fault ended.
                return "ping-refused"
            return "error"  # the daemon's own error after an allow, or the plugin unreachable
        if "audit log cannot be written" in self.stderr:
            return "denied-audit"
        if "empty plugin request" in self.stderr:
            return "denied-retry"  # B19: the daemon's retry after a dropped connection
        if "policy store unavailable" in self.stderr or "no policy loaded" in self.stderr:
            return "denied-store"
        return "denied"


class Load:
    """Threads running ``scripts`` round-robin against ``stack``'s daemon until ``stop()``."""

    def __init__(self, stack: Stack, scripts: Iterable[Callable[[Load, str], None]], threads_per_script: int = 1):
        self.stack = stack
        self.ops: list[Op] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._threads = [threading.Thread(target=self._loop, args=(script,), daemon=True)
                         for script in scripts for _ in range(threads_per_script)]  # fmt: skip

    def marker(self, prefix: str) -> str:
        return f"{prefix}{next(self._counter):05d}x{time.monotonic_ns() % 10**6:06d}"

    def run(self, kind: str, user: str, marker: str, action: str, *args: str) -> Op:
        started = time.monotonic()
        result = self.stack.docker_as(user, *args, timeout=60)
        op = Op(kind, user, marker, action, result.returncode, result.stderr, started, time.monotonic())
        with self._lock:
            self.ops.append(op)
        return op

    def _loop(self, script: Callable[[Load, str], None]) -> None:
        try:
            while not self._stop.is_set():
                script(self, self.marker(script.__name__[:4]))
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Op]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        assert not self.errors, self.errors
        return self.ops

    def since(self, started: float) -> list[Op]:
        with self._lock:
            return [op for op in self.ops if op.started >= started]


# ---------------------------------------------------------------- scripts (one marker per round)


def viewer(load: Load, marker: str) -> None:
    """ps filtered by a label nobody has (the marker is in the URI)."""
    load.run("viewer-ps", "viewer", marker, "container:list", "ps", "-a", "--filter", f"label=m={marker}")


def developer(load: Load, marker: str) -> None:
    """create → inspect → rm of the developer's own container."""
    name = f"c-{marker}"
    created = load.run("dev-create", "dev", marker, "container:create", "create", "--name", name, *RUN_FLAGS,
                       "tiny", "true")  # fmt: skip
    if created.rc == 0:
        load.run("dev-inspect", "dev", name, "container:inspect", "inspect", "--type", "container", name)
        load.run("dev-rm", "dev", name, "container:delete", "rm", name)


def developer_start(load: Load, marker: str) -> None:
    """create → start (runs `true`, exits) → rm -f of the developer's own container."""
    name = f"s-{marker}"
    created = load.run("dev-create", "dev", marker, "container:create", "create", "--name", name, *RUN_FLAGS,
                       "tiny", "true")  # fmt: skip
    if created.rc == 0:
        load.run("dev-start", "dev", name, "container:start", "start", name)
        load.run("dev-rm", "dev", name, "container:delete", "rm", "-f", name)


def privileged(load: Load, marker: str) -> None:
    """The developer asks for --privileged: the policy denies it, always."""
    load.run("dev-privileged", "dev", marker, "container:create", "create", "--privileged", "--name",
             f"p-{marker}", *RUN_FLAGS, "tiny", "true")  # fmt: skip


# ---------------------------------------------------------------- checks


def assert_no_forbidden_allowed(ops: Iterable[Op]) -> None:
    allowed = [op for op in ops if op.kind == "dev-privileged" and op.rc == 0]
    assert not allowed, f"privileged creates allowed: {[op.marker for op in allowed]}"


def outcomes(ops: Iterable[Op]) -> Counter[str]:
    return Counter(op.outcome for op in ops)


def check_audit(url: str, ops: list[Op], timeout: float = 30.0) -> dict[str, int]:
    """Each decided op is audited exactly once (request phase); none twice. Returns the tally.

    ``allowed``/``denied``/``denied-store``: the plugin decided and the daemon got it: exactly one
    record. ``denied-audit``: denied because the journal could not be written: no record.
    ``denied-retry``/``ping-refused``/``error``: the first attempt may or may not have been decided:
    at most one.
    """
    markers = {(op.marker, op.action) for op in ops}
    deadline = time.monotonic() + timeout
    while True:
        stored = Counter((marker, action) for marker, action in _request_records(url) if (marker, action) in markers)
        missing = [op for op in ops if op.outcome in ("allowed", "denied", "denied-store")
                   and stored[(op.marker, op.action)] < 1]  # fmt: skip
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"{len(missing)} decisions missing from the audit log, e.g. {missing[:3]}"
    twice = [key for key, n in stored.items() if n > 1]
    assert not twice, f"{len(twice)} operations audited more than once, e.g. {twice[:3]}"
    unrecorded = [op for op in ops if op.outcome == "denied-audit" and stored[(op.marker, op.action)] != 0]
    assert not unrecorded, f"records for decisions reported as unrecordable: {unrecorded[:3]}"
    return {"operations": len(ops), "audited": sum(stored.values()), **outcomes(ops)}


def _request_records(url: str) -> list[tuple[str, str]]:
    """(marker, action) of every request-phase record whose URI carries a marker."""
    found = []
    for phase, _rid, _allow, uri, _chain, _seq, _node, action in audit_rows(url):
        if phase != "request":
            continue
        marker = _marker_in(uri)
        if marker is not None:
            found.append((marker, action))
    return found


def _marker_in(uri: str) -> str | None:
    """The marker a URI carries: ``c-<m>``/``s-<m>``/``p-<m>`` names, ``m=<m>`` labels, ``name=<m>``."""
    path, _, query = uri.partition("?")
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "name":
            return value[2:] if value[:2] in ("c-", "s-", "p-") else value
        if key == "filters" and "m%3D" in value:
            return value.split("m%3D", 1)[1].split("%22", 1)[0]
    pieces = path.split("/")
    if len(pieces) > 3 and pieces[2] == "containers" and pieces[3][:2] in ("c-", "s-"):
        return pieces[3]  # inspect, start, rm: the container's name is the marker
    return None
