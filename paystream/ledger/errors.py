"""Errors raised by the ledger (PostgreSQL system of record)."""

from __future__ import annotations

from paystream.errors import PaystreamError

__all__ = [
    "ChainWipedError",
    "CustomerNotFoundError",
    "EventIdConflictError",
    "ForbiddenDataError",
    "InvalidEventError",
    "LedgerError",
    "RlsNotEnforcedError",
    "TenantNotInLedgerError",
]


class LedgerError(PaystreamError):
    """Root of ledger errors."""


class RlsNotEnforcedError(LedgerError):
    """The connection's role would bypass row-level security (superuser, owner or BYPASSRLS)."""


class TenantNotInLedgerError(LedgerError):
    """The ledger holds nothing of the tenant: no row in ``tenants``, which its first
    stored event makes (a mistyped id, or none of its events stored here yet). A report
    of it would read as a tenant that had nothing to report (review h74r)."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__(
            f"the ledger holds no events of tenant {tenant_id!r}: check the id (the ledger "
            "knows a tenant once a worker stored its first event here)"
        )
        self.tenant_id = tenant_id


class InvalidEventError(LedgerError):
    """The event cannot be stored as given; retrying will not help (dead-letter it)."""

    def __init__(self, event_id: str, reason: str) -> None:
        super().__init__(f"event {event_id!r}: {reason}")
        self.event_id = event_id
        self.reason = reason


class ForbiddenDataError(InvalidEventError):
    """The event carried data the ledger must never store (a card number or CVC)."""


class EventIdConflictError(InvalidEventError):
    """Another event is stored under this event id (a producer reused a command id once
    its idempotency records expired, under an older version's ids): storing neither as a
    duplicate of the other, it is parked for an operator."""


class CustomerNotFoundError(LedgerError):
    """No such customer for this tenant (or it belongs to another tenant)."""


class ChainWipedError(LedgerError):
    """The tenant's audit chain is empty though events are stored that it held (deleted
    whole): the backfill does not build a new chain over that (`audit verify` says so)."""
