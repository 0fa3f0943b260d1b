"""Sign-in throttling, shared by every worker of the admin listener through one SQLite file.

Keys are ``account:<name>`` and ``address:<client address>``. Each failure within the window
counts; from the threshold on, every further failure locks the key for an exponentially growing
time (``ThrottlePolicy``). While a key is locked, sign-in is refused before the password is even
checked, so guessing costs the attacker time and the server no argon2 work. A success clears the
account key (the address key decays with the window: one good password must not reset the budget
of an address that is guessing other accounts).

The state is a separate SQLite file under the state directory rather than a table of the store:
it is per host, needs no migration, and losing it only forgets recent failures.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from admin.settings import ThrottlePolicy

_SCHEMA = """
CREATE TABLE IF NOT EXISTS signin_failures (
    key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    last_failure REAL NOT NULL,
    locked_until REAL NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Lockout:
    key: str
    retry_after: float  # seconds


class Throttle:
    def __init__(self, path: Path, policy: ThrottlePolicy, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.policy = policy
        self.clock = clock
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")  # read-modify-write of a counter: one worker at a time
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    @staticmethod
    def keys(account: str, address: str) -> tuple[str, str]:
        return f"account:{account[:256]}", f"address:{address}"

    def locked(self, account: str, address: str) -> Lockout | None:
        """The lockout in force for this account or address, if any (the longer one)."""
        now = self.clock()
        worst: Lockout | None = None
        with self._connect() as conn:
            for key in self.keys(account, address):
                row = conn.execute("SELECT locked_until FROM signin_failures WHERE key = ?", (key,)).fetchone()
                if row is not None and row[0] > now and (worst is None or row[0] - now > worst.retry_after):
                    worst = Lockout(key, row[0] - now)
        return worst

    def failure(self, account: str, address: str) -> None:
        now = self.clock()
        thresholds = (self.policy.account_threshold, self.policy.address_threshold)
        with self._connect() as conn:
            for key, threshold in zip(self.keys(account, address), thresholds, strict=True):
                row = conn.execute(
                    "SELECT failures, last_failure FROM signin_failures WHERE key = ?", (key,)
                ).fetchone()
                failures = 1 if row is None or now - row[1] > self.policy.window else row[0] + 1
                locked_until = now + self._delay(failures, threshold) if failures >= threshold else 0.0
                conn.execute(
                    "INSERT INTO signin_failures (key, failures, last_failure, locked_until) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET failures = excluded.failures, "
                    "last_failure = excluded.last_failure, locked_until = excluded.locked_until",
                    (key, failures, now, locked_until),
                )
            # Old rows are garbage: an attacker rotating names must not grow the file forever.
            conn.execute(
                "DELETE FROM signin_failures WHERE last_failure < ? AND locked_until < ?",
                (now - 2 * self.policy.window, now),
            )

    def success(self, account: str) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM signin_failures WHERE key = ?", (self.keys(account, "")[0],))

    def _delay(self, failures: int, threshold: int) -> float:
        exponent = min(failures - threshold, 32)  # 2**32 * base is far past any max_delay
        return min(self.policy.base_delay * math.pow(2, exponent), self.policy.max_delay)
