"""The repositories of the store, in one import: the names the composition roots use.

==========================  ========================================================
``PolicyStore``             policy load/apply/history, users, groups, roles (``directory``)
``TokenStore``              issued tokens, revocation (``tokens``)
``BreakglassStore``         emergency grants (``tokens``)
``AuditStore``              ``AuditSink``, tail, query, export (``audit_store``)
``OwnershipRepository``     ``OwnershipStore`` (``ownership``)
==========================  ========================================================
"""

from __future__ import annotations

from authz.storage.audit_store import AuditFilter, AuditRecord, AuditStore
from authz.storage.directory import GroupInfo, PolicyStore, RoleInfo, UserInfo
from authz.storage.ownership import OwnedObject, OwnershipRepository
from authz.storage.policy_store import ApplyResult, Change
from authz.storage.revision import HistoryEntry
from authz.storage.tokens import BreakglassGrant, BreakglassStore, RecordNotFound, TokenRecord, TokenStore

__all__ = [
    "ApplyResult",
    "AuditFilter",
    "AuditRecord",
    "AuditStore",
    "BreakglassGrant",
    "BreakglassStore",
    "Change",
    "GroupInfo",
    "HistoryEntry",
    "OwnedObject",
    "OwnershipRepository",
    "PolicyStore",
    "RecordNotFound",
    "RoleInfo",
    "TokenRecord",
    "TokenStore",
    "UserInfo",
]
