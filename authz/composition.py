"""The composition root: build concrete objects from a ``Config`` (an edge).

Only this module, the CLI and the app factories know which concrete classes implement the core's
ports.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from authz.config import Config
from authz.decide import Authorizer
from authz.identity.token import JwtVerifier, KeyStore
from authz.server import create_app
from authz.storage.db import Database
from authz.storage.repositories import AuditStore, OwnershipRepository
from authz.storage.source import StorePolicySource


def build_authorizer(config: Config, db: Database | None = None) -> Authorizer:
    db = db or Database(config.database_url)
    keys = KeyStore(config.keys_dir)
    keys.load_or_create()
    return Authorizer(
        policy=StorePolicySource(db, poll=config.revision_poll),
        audit=AuditStore(db),
        verifier=JwtVerifier(keys, audience=config.token_audience),
        ownership=OwnershipRepository(db),
        node=config.node,
    )


def build_plugin_app(config: Config) -> Flask:
    db = Database(config.database_url)
    authorizer = build_authorizer(config, db)
    source = StorePolicySource(db, poll=config.revision_poll)

    def health() -> dict[str, Any]:
        try:
            revision = source.current().revision
        except Exception as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "policy_revision": revision}

    return create_app(authorizer, health=health)
