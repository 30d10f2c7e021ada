"""Test helpers for the ledger: database handles and an event factory."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from paystream.ledger import LedgerEvent


@dataclass(frozen=True)
class LedgerDb:
    owner_url: str
    app_url: str


class EventFactory:
    """Builds LedgerEvents with unique ids; ``payment(...)`` etc. fill sensible snapshots."""

    def __init__(self) -> None:
        self._n = 0

    def __call__(
        self,
        tenant_id: str,
        entity_type: str,
        entity_id: str,
        version: int,
        data: dict[str, Any],
        *,
        type: str | None = None,
        event_id: str | None = None,
    ) -> LedgerEvent:
        self._n += 1
        return LedgerEvent(
            event_id=event_id or f"evt_{self._n}_{secrets.token_hex(4)}",
            type=type or f"com.paystream.{entity_type}.updated",
            tenant_id=tenant_id,
            causation_id=f"cmd_{self._n}",
            time=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=self._n),
            entity_type=entity_type,  # type: ignore[arg-type]  # validated by LedgerEvent
            entity_id=entity_id,
            version=version,
            data=data,
        )

    def payment(
        self, tenant_id: str, payment_id: str, version: int = 1, **data: Any
    ) -> LedgerEvent:
        snapshot = {
            "amount": 1000,
            "currency": "USD",
            "status": "succeeded",
            "amount_captured": 1000,
            "customer_id": "cus_1",
            "provider": "simulator",
            "provider_payment_id": f"sim_{payment_id}",
            **data,
        }
        return self(
            tenant_id,
            "payment",
            payment_id,
            version,
            snapshot,
            type="com.paystream.payment.succeeded",
        )

    def customer(
        self, tenant_id: str, customer_id: str, version: int = 1, **data: Any
    ) -> LedgerEvent:
        snapshot = {"email": f"{customer_id}@example.com", "name": "Ada Lovelace", **data}
        return self(
            tenant_id,
            "customer",
            customer_id,
            version,
            snapshot,
            type="com.paystream.customer.created",
        )

    def subscription(
        self, tenant_id: str, subscription_id: str, version: int = 1, **data: Any
    ) -> LedgerEvent:
        """A subscription's snapshot as the pipeline publishes one (SubscriptionRecord)."""
        snapshot = {
            "tenant_id": tenant_id, "id": subscription_id, "version": version,
            "provider": "simulator", "created_by": "cmd_sub", "customer_id": "cus_1",
            "payment_method_id": "pm_1", "status": "active", "amount": 1500,
            "currency": "EUR", "interval": "month", "interval_count": 1,
            "provider_subscription_id": f"sim_{subscription_id}",
            "current_period_start": "2025-01-01T00:00:00+00:00",
            "current_period_end": "2025-02-01T00:00:00+00:00", "trial_end": None,
            "cancel_at_period_end": False, "canceled_at": None,
            "latest_invoice_id": f"in_{subscription_id}_1", "description": None,
            "metadata": {"plan": "gold"},
            **data,
        }  # fmt: skip
        return self(
            tenant_id,
            "subscription",
            subscription_id,
            version,
            snapshot,
            type="com.paystream.subscription.created"
            if version == 1
            else "com.paystream.subscription.updated",
        )

    def invoice(
        self, tenant_id: str, invoice_id: str, version: int = 1, **data: Any
    ) -> LedgerEvent:
        """An invoice's snapshot (InvoiceRecord), as a subscription outcome relates it."""
        snapshot = {
            "tenant_id": tenant_id, "id": invoice_id, "version": version,
            "provider": "simulator", "created_by": "cmd_sub", "subscription_id": "sub_1",
            "customer_id": "cus_1", "status": "paid", "amount": 1500, "currency": "EUR",
            "period_start": "2025-01-01T00:00:00+00:00",
            "period_end": "2025-02-01T00:00:00+00:00",
            "provider_invoice_id": f"sim_{invoice_id}", "provider_payment_id": "sim_pi_1",
            "failure_code": None, "failure_message": None,
            **data,
        }  # fmt: skip
        return self(
            tenant_id,
            "invoice",
            invoice_id,
            version,
            snapshot,
            type="com.paystream.subscription.created",
        )

    def payout(self, tenant_id: str, payout_id: str, version: int = 1, **data: Any) -> LedgerEvent:
        """A payout's snapshot as the pipeline publishes one (PayoutRecord)."""
        snapshot = {
            "tenant_id": tenant_id, "id": payout_id, "version": version,
            "provider": "simulator", "created_by": "cmd_po", "status": "pending",
            "amount": 3000, "currency": "EUR", "method": "standard",
            "provider_payout_id": f"sim_{payout_id}",
            "arrival_date": "2025-01-03T00:00:00+00:00", "failure_code": None,
            "failure_message": None, "description": "June takings",
            "statement_descriptor": "ACME JUNE", "metadata": {"batch": "june"},
            **data,
        }  # fmt: skip
        status = str(snapshot["status"])
        kind = "created" if version == 1 else status
        if kind not in ("created", "paid", "failed", "canceled"):
            kind = "updated"  # (in_transit, or unchanged: what payout.refresh emits)
        return self(
            tenant_id,
            "payout",
            payout_id,
            version,
            snapshot,
            type=f"com.paystream.payout.{kind}",
        )


async def forget_master_keys(url: str) -> None:
    """As the owner at ``url``: empty migration 0012's record of the master keys the
    ledger has seen (a test making keys of its own in a database earlier tests wrote)."""
    from sqlalchemy import text
    from sqlalchemy.pool import NullPool

    from paystream.ledger import create_engine

    engine = create_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            if await conn.scalar(text("SELECT to_regclass('master_keys_seen') IS NOT NULL")):
                await conn.execute(text("DELETE FROM master_keys_seen"))
    finally:
        await engine.dispose()


def sink_audit_row(
    action: str, entity_type: str, entity_id: str, after: dict[str, Any]
) -> dict[str, Any]:
    """An audit row as the ledger sink writes one for a new entity (for insert_audit_row)."""
    from datetime import UTC, datetime

    return {
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
        "actor": "system:ledger-sink",
        "action": action,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "before": None,
        "after": after,
    }


async def insert_audit_row(
    conn: Any,
    tenant: str,
    seq: int,
    prev: bytes,
    row: dict[str, Any],
    key: bytes | None = None,
    key_id: str | None = None,
) -> bytes:
    """An audit row written straight into the table, chained onto ``prev`` (as a forger
    would, or a version before keyed chains, whose schema had no ``key_id``); returns
    its hash. ``conn``: a connection or session."""
    import json

    from sqlalchemy import text

    from paystream.ledger.audit import chain_hash

    digest = chain_hash(prev, tenant, seq, row, key)
    keyed = ", key_id" if key_id is not None else ""
    await conn.execute(
        text(
            "INSERT INTO audit_log (tenant_id, seq, occurred_at, actor, action, entity_type, "
            f"entity_id, before, after, prev_hash, hash{keyed}) VALUES (:t, :s, :o, :a, :ac, "
            f":et, :ei, NULL, CAST(:af AS jsonb), :p, :h{', :k' if keyed else ''})"
        ),
        {"t": tenant, "s": seq, "o": row["occurred_at"], "a": row["actor"],
         "ac": row["action"], "et": row["entity_type"], "ei": row["entity_id"],
         "af": json.dumps(row["after"]), "p": prev, "h": digest, "k": key_id},
    )  # fmt: skip
    return digest


def tax_rate(
    make: EventFactory, tenant_id: str, rate_id: str, version: int = 1, **data: Any
) -> LedgerEvent:
    """A tax rate's snapshot as the pipeline publishes one (TaxRateRecord)."""
    snapshot = {
        "tenant_id": tenant_id, "id": rate_id, "version": version, "provider": "simulator",
        "created_by": "cmd_txr", "status": "active", "display_name": "VAT",
        "percentage": "20", "inclusive": False, "country": "GB", "state": None,
        "jurisdiction": None, "tax_type": "vat", "description": None, "metadata": {},
        "provider_tax_rate_id": f"sim_{rate_id}",
        **data,
    }  # fmt: skip
    kind = "created" if version == 1 else "archived"
    return make(
        tenant_id, "tax_rate", rate_id, version, snapshot, type=f"com.paystream.tax_rate.{kind}"
    )


def tax_calculation(
    make: EventFactory, tenant_id: str, calc_id: str, by_rate: dict[str, int], subtotal: int = 1000
) -> LedgerEvent:
    """A tax.calculate's answer (TaxCalculationRecord): exclusive rates on one line."""
    tax = sum(by_rate.values())
    snapshot = {
        "tenant_id": tenant_id, "id": calc_id, "version": 1, "provider": "simulator",
        "created_by": "cmd_calc", "currency": "GBP",
        "line_items": [{"reference": "sku", "amount": subtotal, "quantity": 1,
                        "taxable_amount": subtotal, "amount_tax": tax,
                        "amount_total": subtotal + tax, "taxes": []}],
        "amount_subtotal": subtotal, "amount_tax": tax, "amount_tax_inclusive": 0,
        "amount_tax_exclusive": tax, "amount_total": subtotal + tax, "tax_by_rate": by_rate,
        "expires_at": "2025-01-02T00:00:00+00:00",
    }  # fmt: skip
    return make(
        tenant_id, "tax_calculation", calc_id, 1, snapshot, type="com.paystream.tax.calculated"
    )


async def insert_event_rows(session: Any, events: list[LedgerEvent]) -> None:
    """``events`` written as events rows alone, as a sink from before their entity had a
    table stored them (the migration tests' older versions). ``session``: the tenant's."""
    import json

    from sqlalchemy import text

    for e in events:
        await session.execute(
            text(
                "INSERT INTO events (tenant_id, event_id, type, causation_id, entity_type, "
                "entity_id, entity_version, time, data) VALUES (:t, :id, :ty, :c, :et, "
                ":ei, :v, :tm, CAST(:d AS jsonb))"
            ),
            {"t": e.tenant_id, "id": e.event_id, "ty": e.type, "c": e.causation_id,
             "et": e.entity_type.value, "ei": e.entity_id, "v": e.version, "tm": e.time,
             "d": json.dumps(dict(e.data))},
        )  # fmt: skip


async def wipe_audit_chain(conn: Any, tenant: str) -> None:
    """The tenant's audit chain (its entries and its head) deleted as the owner, past
    their append-only and forward-only triggers: an audit chain wiped."""
    from sqlalchemy import text

    for table, trigger in (
        ("audit_log", "audit_log_append_only"),
        ("audit_heads", "audit_heads_forward_only"),
    ):
        await conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}"))
        await conn.execute(text(f"DELETE FROM {table} WHERE tenant_id = :t"), {"t": tenant})
        await conn.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}"))


def connected_account(
    make: EventFactory, tenant_id: str, account_id: str, version: int = 1, **data: Any
) -> LedgerEvent:
    """A connected account's snapshot as the pipeline publishes one
    (ConnectedAccountRecord): pending with its requirements, unless ``data`` says."""
    snapshot = {
        "tenant_id": tenant_id, "id": account_id, "version": version, "provider": "simulator",
        "created_by": "cmd_ca", "status": "pending", "type": "express", "country": "US",
        "business_type": None, "capabilities": ["transfers"], "metadata": {"shop": "7"},
        "provider_account_id": f"acct_{account_id}", "charges_enabled": False,
        "payouts_enabled": False, "details_submitted": False,
        "currently_due": ["external_account"], "disabled_reason": "requirements.past_due",
        **data,
    }  # fmt: skip
    kind = "created" if version == 1 else "updated"
    return make(
        tenant_id,
        "connected_account",
        account_id,
        version,
        snapshot,
        type=f"com.paystream.connected_account.{kind}",
    )


def transfer(
    make: EventFactory, tenant_id: str, transfer_id: str, version: int = 1, **data: Any
) -> LedgerEvent:
    """A transfer's snapshot as the pipeline publishes one (TransferRecord): 3 000 USD
    cents from payment p1 to account ca1, none reversed, unless ``data`` says."""
    snapshot = {
        "tenant_id": tenant_id, "id": transfer_id, "version": version, "provider": "simulator",
        "created_by": "cmd_tr", "status": "created", "amount": 3000, "currency": "USD",
        "amount_reversed": 0, "connected_account_id": "ca1", "payment_id": "p1",
        "transfer_group": "order-1", "provider_transfer_id": f"tr_{transfer_id}",
        "description": None, "metadata": {"order": "1"},
        **data,
    }  # fmt: skip
    kind = "created" if version == 1 else "reversed"
    return make(
        tenant_id,
        "transfer",
        transfer_id,
        version,
        snapshot,
        type=f"com.paystream.transfer.{kind}",
    )
