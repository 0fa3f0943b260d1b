"""What the core needs from the edges, as typing.Protocols.

The storage layer, the JWT verifier and the clock implement these; in-memory fakes serve unit
tests and the simulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from authz.audit import AuditEvent
    from authz.policy.model import PolicySnapshot


class Clock(Protocol):
    def __call__(self) -> float:
        """Seconds since the epoch."""
        ...


class PolicySource(Protocol):
    def current(self, at_least: int = 0) -> PolicySnapshot:
        """The newest policy snapshot; cheap to call on every request (revision check).

        ``at_least``: a revision the caller knows the store has reached (the one a token was
        issued at). A snapshot older than that is refreshed from the store first, within the
        source's own deadline; a store that does not get there leaves the older snapshot.
        """
        ...

    def last_known(self, at_least: int = 0) -> PolicySnapshot:
        """The newest snapshot loaded, even while ``current`` refuses to decide with it
        (``AUTHZ_ON_STORE_ERROR=deny``): for recording who did what already ran. ``at_least``:
        as for ``current``."""
        ...


class TokenVerifier(Protocol):
    def verify(self, token: str, now: float) -> TokenClaims:
        """Verify signature, audience and expiry; raise IdentityError with a clear message."""
        ...


class TokenClaims(Protocol):
    @property
    def subject(self) -> str: ...
    @property
    def token_id(self) -> str: ...
    @property
    def expires_at(self) -> float: ...
    @property
    def policy_revision(self) -> int:
        """The policy revision the token was issued at (0: not known)."""
        ...


class AuditSink(Protocol):
    def write(self, event: AuditEvent) -> None:
        """Persist the event durably before returning (the reply waits for it)."""
        ...


# The daemon finds volumes (by name, which is their ID) and exec instances by exact ID only;
# containers and networks also by name and by unique ID prefix.
EXACT_ONLY_KINDS = frozenset({"volume", "exec"})


class OwnershipStore(Protocol):
    def owner_of(self, kind: str, reference: str) -> str | None:
        """Owner of the object that ``reference`` names: its full ID, or for a kind not in
        ``EXACT_ONLY_KINDS`` also its name or a unique ID prefix."""
        ...

    def record(self, kind: str, object_id: str, name: str | None, owner: str) -> None: ...

    def forget(self, kind: str, reference: str) -> None: ...

    def forget_named(self, kind: str, name: str) -> None:
        """Drop the record named exactly ``name`` (a prune reports networks by name only)."""
        ...

    def rename(self, kind: str, reference: str, new_name: str) -> None: ...
