"""What the views work with, built once per app by ``create_app`` (the admin composition root)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import cast

from flask import current_app

from admin.accounts import AccountStore, make_context
from admin.audit_queries import AuditQueries
from admin.settings import AdminSettings
from admin.throttle import Throttle
from authz.audit_shipper import JournalShipper
from authz.identity.token import KeyStore
from authz.ports import AuditSink
from authz.storage.db import Database
from authz.storage.repositories import AuditStore, OwnershipRepository, PolicyStore, TokenStore


@dataclass
class Services:
    settings: AdminSettings
    db: Database
    policy: PolicyStore
    tokens: TokenStore
    ownership: OwnershipRepository
    accounts: AccountStore
    audit: AuditQueries
    sink: AuditSink  # where admin events go: the journal (chained), or the table directly
    throttle: Throttle
    shipper: JournalShipper | None = None  # moves journaled admin events into the store
    _keys: KeyStore | None = field(default=None, repr=False)
    _keys_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, settings: AdminSettings, db: Database) -> Services:
        sink: AuditSink = AuditStore(db)
        shipper = None
        if settings.audit_journal:
            from authz.composition import build_audit_journal  # noqa: PLC0415 - only the journal needs it

            sink, shipper = build_audit_journal(settings.base, db)
        return cls(
            settings=settings,
            db=db,
            policy=PolicyStore(db),
            tokens=TokenStore(db),
            # A shared (fleet) database: the simulator judges as the plugin on this host would.
            ownership=OwnershipRepository(db, node="" if db.sqlite else settings.base.node),
            accounts=AccountStore(db, make_context(settings.hash_params)),
            audit=AuditQueries(db),
            sink=sink,
            throttle=Throttle(settings.admin_dir / "throttle.sqlite", settings.throttle),
            shipper=shipper,
        )

    def keys(self) -> KeyStore:
        """The token signing keys (the plugin's: tokens issued here must verify there)."""
        with self._keys_lock:
            if self._keys is None:
                self._keys = KeyStore(self.settings.base.keys_dir).load_or_create()
            else:
                self._keys.refresh()  # another process may have rotated the key
            return self._keys


def services() -> Services:
    return cast(Services, current_app.extensions["authz_admin"])
