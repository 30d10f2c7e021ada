"""One-off invoices in the ledger: their outcomes (invoice.created, .finalized, .paid)
write `invoices` rows, as a subscription's invoices do, with no subscription or period,
each with its audit entry; a replay writes nothing twice; the chain verifies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.v1.event import CloudEvent
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.ledger.models import AuditLog, Invoice
from paystream.ledger.sink import outcome_to_ledger_events
from paystream.streams.outcomes import build_outcome, command_ref
from paystream.tenancy.crypto import MasterKeyring


def _invoice(tenant: str, version: int, status: str, **changes: Any) -> dict[str, Any]:
    """A one-off invoice as the worker publishes it (InvoiceRecord.snapshot)."""
    return {
        "tenant_id": tenant, "id": "in1", "version": version, "provider": "simulator",
        "created_by": "cmd-1", "subscription_id": None, "customer_id": "cus1",
        "status": status, "amount": 3600, "currency": "EUR", "period_start": None,
        "period_end": None, "provider_invoice_id": "in_x", "provider_payment_id": None,
        "failure_code": None, "failure_message": None, "subtotal": 3000, "tax": 600,
        "total": 3600, "line_items": [{"description": "Hours", "amount": 1500, "quantity": 2}],
        "tax_rate_ids": ["vat"], "collection_method": "charge_automatically",
        "payment_method_id": "pm1", "days_until_due": None, "due_date": None,
        "description": "March", "metadata": {"order": "o-1"},
        **changes,
    }  # fmt: skip


def _outcome(tenant: str, outcome_type: str, command_type: str, inv: dict[str, Any]) -> CloudEvent:
    version = inv["version"]
    cmd = command_ref(
        tenant_id=tenant,
        command_id=f"cmd-{version}",
        command_type=command_type,
        idempotency_key=f"cmd-{version}",
        time=datetime(2025, 1, 1, version, tzinfo=UTC),
        traceparent=None,
        tracestate=None,
        source=None,
        id_salt=None,
    )
    data = {
        "tenant_id": tenant, "command_id": cmd.command_id, "entity_type": "invoice",
        "entity_id": inv["id"], "version": version, "object": inv,
    }  # fmt: skip
    return build_outcome(cmd, outcome_type, data)


async def test_a_one_off_invoice_is_written_and_moved_forward(
    app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    t = f"inv-{uuid.uuid4().hex[:10]}"
    steps = [
        ("invoice.created", "invoice.create", _invoice(t, 1, "draft")),
        ("invoice.finalized", "invoice.finalize", _invoice(t, 2, "open")),
        ("invoice.paid", "invoice.pay", _invoice(t, 3, "paid", provider_payment_id="pi_1")),
    ]
    for outcome_type, command_type, inv in steps:
        made = outcome_to_ledger_events(_outcome(t, outcome_type, command_type, inv))
        assert (await write_events(app_engine, made, keyring=keyring)).entities_applied == 1
        assert (await write_events(app_engine, made, keyring=keyring)).events_written == 0
    async with tenant_session(app_engine, t) as s:
        [row] = (await s.scalars(select(Invoice))).all()
        audit = (
            await s.execute(select(AuditLog.entity_id, AuditLog.action).order_by(AuditLog.seq))
        ).all()
    assert (row.invoice_id, row.status, row.amount, row.currency, row.version) == (
        "in1", "paid", 3600, "EUR", 3,
    )  # fmt: skip
    assert (row.subscription_id, row.period_start, row.customer_id) == (None, None, "cus1")
    assert (row.subtotal, row.tax, row.provider_payment_id) == (3000, 600, "pi_1")
    assert [a for _, a in audit] == [f"com.paystream.{o}" for o, _, _ in steps]
    assert (await verify_audit(app_engine, t, keyring)).problems == []


async def test_an_updated_drafts_new_total_is_stored(
    app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    """invoice.update's outcome (invoice.updated, a draft still): its new amount, subtotal
    and tax replace the draft's (upserted by version); a replay of the created outcome,
    older, changes nothing back."""
    t = f"inv-{uuid.uuid4().hex[:10]}"
    created = _outcome(t, "invoice.created", "invoice.create", _invoice(t, 1, "draft"))
    changed = _invoice(t, 2, "draft", amount=9600, subtotal=8000, tax=1600, total=9600)
    updated = _outcome(t, "invoice.updated", "invoice.update", changed)
    for event in (created, updated, created):
        await write_events(app_engine, outcome_to_ledger_events(event), keyring=keyring)
    async with tenant_session(app_engine, t) as s:
        [row] = (await s.scalars(select(Invoice))).all()
    assert (row.status, row.amount, row.subtotal, row.tax, row.version) == (
        "draft", 9600, 8000, 1600, 2,
    )  # fmt: skip
    assert (await verify_audit(app_engine, t, keyring)).problems == []
