"""``StorePolicySource``: the compiled ``PolicySnapshot`` of the store, refreshed by revision.

``current()`` is called on every request. It returns the snapshot held in memory and reads the
one-row revision at most once per ``poll`` seconds; only when the revision moved does it rebuild
the snapshot (policy, revoked token ids, active break-glass grants), read in one transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from authz.errors import AuthzError, StoreError
from authz.policy.model import PolicySnapshot
from authz.storage.db import Database
from authz.storage.directory import PolicyStore
from authz.storage.revision import read_revision
from authz.storage.tokens import active_grants_in, revoked_ids_in

log = logging.getLogger(__name__)


class StorePolicySource:
    """Implements ``authz.ports.PolicySource``; one per process, safe to share between threads."""

    def __init__(
        self,
        db: Database,
        poll: float = 0.5,
        store: PolicyStore | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.poll = poll
        self.store = store or PolicyStore(db)
        self._monotonic = monotonic
        self._wall = wall
        self._lock = threading.Lock()
        self._snapshot: PolicySnapshot | None = None
        self._checked_at = -float("inf")
        self._failing = False

    def current(self) -> PolicySnapshot:
        """The newest snapshot; raises ``StoreError`` only if none could ever be loaded."""
        snapshot = self._snapshot
        if snapshot is not None and self._monotonic() - self._checked_at < self.poll:
            return snapshot
        # Another thread is refreshing: serve the snapshot we have rather than queue behind it.
        if not self._lock.acquire(blocking=snapshot is None):
            return snapshot  # type: ignore[return-value]  # non-blocking only when snapshot is set
        try:
            if self._snapshot is not None and self._monotonic() - self._checked_at < self.poll:
                return self._snapshot
            return self._refresh()
        finally:
            self._lock.release()

    def _refresh(self) -> PolicySnapshot:
        previous = self._snapshot
        self._checked_at = self._monotonic()
        try:
            with self.db.session(consistent=True) as session:
                revision = read_revision(session)
                if previous is not None and previous.revision == revision:
                    snapshot = previous
                else:
                    now = self._wall()
                    snapshot = PolicySnapshot(
                        revision=revision,
                        policy=self.store.load_in(session),
                        revoked_tokens=revoked_ids_in(session, now),
                        breakglass=active_grants_in(session, now),
                    )
        except (AuthzError, OSError) as exc:
            # Fail static, not open: the last good policy keeps denying what it denied; denying
            # everyone during an outage would stop the admins who must fix it. Changes made
            # meanwhile (revocations) apply as soon as this process can read the store again.
            if previous is None:
                # Fail closed: with no policy ever loaded there is nothing safe to decide with.
                raise StoreError(f"no policy loaded and the store failed: {exc}") from exc
            if not self._failing:
                log.error("policy store failed, keeping revision %d until it recovers: %s", previous.revision, exc)
                self._failing = True
            return previous
        if self._failing:
            log.warning("policy store recovered at revision %d", snapshot.revision)
            self._failing = False
        self._snapshot = snapshot
        return snapshot
