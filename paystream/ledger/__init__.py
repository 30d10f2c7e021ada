"""The ledger: PostgreSQL system of record with tenant RLS, encrypted PII and an audit chain.

Roles: migrations run as the schema owner (``DATABASE_URL``); the application connects
as ``paystream_app`` (see :func:`paystream.ledger.migrate.app_database_url`), which row-level
security restricts to the tenant set by :func:`tenant_session`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Where each name lives, loaded on first use: a worker that does not run the ledger
# imports paystream.ledger.errors and .events (its outcomes agent translates outcomes),
# and importing them loaded the whole package, SQLAlchemy and the models with it.
_HOMES = {
    "AuditEntry": "audit",
    "VerifyResult": "audit",
    "verify_audit": "audit",
    "CustomerNotFoundError": "errors",
    "EventIdConflictError": "errors",
    "ForbiddenDataError": "errors",
    "InvalidEventError": "errors",
    "LedgerError": "errors",
    "RlsNotEnforcedError": "errors",
    "EntityType": "events",
    "LedgerEvent": "events",
    "rotate_master_key": "keys",
    "erase_customer": "privacy",
    "export_customer": "privacy",
    "assert_rls_enforced": "session",
    "create_engine": "session",
    "tenant_session": "session",
    "WriteResult": "writer",
    "write_events": "writer",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
