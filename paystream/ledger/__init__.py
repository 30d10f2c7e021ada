"""The ledger: PostgreSQL system of record with tenant RLS, encrypted PII and an audit chain.

Roles: migrations run as the schema owner (``DATABASE_URL``); the application connects
as ``paystream_app`` (see :func:`paystream.ledger.migrate.app_database_url`), which row-level
security restricts to the tenant set by :func:`tenant_session`.
"""

from __future__ import annotations

from paystream.ledger.audit import AuditEntry, VerifyResult, verify_audit
from paystream.ledger.errors import (
    CustomerNotFoundError,
    EventIdConflictError,
    ForbiddenDataError,
    InvalidEventError,
    LedgerError,
    RlsNotEnforcedError,
)
from paystream.ledger.events import EntityType, LedgerEvent
from paystream.ledger.keys import rotate_master_key
from paystream.ledger.privacy import erase_customer, export_customer
from paystream.ledger.session import assert_rls_enforced, create_engine, tenant_session
from paystream.ledger.writer import WriteResult, write_events

__all__ = [
    "AuditEntry",
    "CustomerNotFoundError",
    "EntityType",
    "EventIdConflictError",
    "ForbiddenDataError",
    "InvalidEventError",
    "LedgerError",
    "LedgerEvent",
    "RlsNotEnforcedError",
    "VerifyResult",
    "WriteResult",
    "assert_rls_enforced",
    "create_engine",
    "erase_customer",
    "export_customer",
    "rotate_master_key",
    "tenant_session",
    "verify_audit",
    "write_events",
]
