"""Tax outcomes in the ledger: every one the pipeline emits (a rate made and archived, a
calculation, a taxed payment, a subscription's taxed invoice) is stored in ``events`` as
the sink translates it, never refused (a refusal would dead-letter the tenant's history),
and written to rows (migration 0015): a rate's and a calculation's with audit entries, a
taxed payment's and invoice's tax in their rows' columns as in their events."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import tenant_session, verify_audit, write_events
from paystream.ledger.events import EntityType
from paystream.ledger.models import AuditLog, Event, Invoice, Payment, TaxCalculation, TaxRate
from paystream.ledger.sink import outcome_to_ledger_events
from paystream.tenancy.crypto import MasterKeyring
from tests.agents.conftest import running_harness
from tests.agents.harness import data, kind

pytestmark = pytest.mark.asyncio
VAT = {"display_name": "VAT", "percentage": "20", "inclusive": False, "country": "GB"}


async def test_every_tax_outcome_is_stored(
    redis_url: str, app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        outcomes = [await h.send("tax_rate.create", t, {**VAT, "tax_rate_id": "vat"})]
        outcomes.append(
            await h.send(
                "tax.calculate",
                t,
                {
                    "currency": "GBP",
                    "tax_rate_ids": ["vat"],
                    "line_items": [{"amount": 1000, "reference": "sku"}],
                },
            )
        )
        calc_id = data(outcomes[-1])["entity_id"]
        outcomes.append(
            await h.send(
                "payment.create",
                t,
                {
                    "payment_id": "p1",
                    "amount": 1200,
                    "currency": "GBP",
                    "payment_method_token": "pm_card_visa",
                    "tax_calculation_id": calc_id,
                },
            )
        )
        await h.send("customer.create", t, {"customer_id": "c1"})
        await h.send(
            "payment_method.attach", t,
            {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "m1"},
        )  # fmt: skip
        outcomes.append(
            await h.send(
                "subscription.create",
                t,
                {
                    "subscription_id": "s1",
                    "customer_id": "c1",
                    "payment_method_id": "m1",
                    "amount": 1000,
                    "currency": "GBP",
                    "interval": "month",
                    "tax_rate_ids": ["vat"],
                },
            )
        )
        outcomes.append(await h.send("tax_rate.archive", t, {"tax_rate_id": "vat"}))
    assert [kind(o) for o in outcomes] == [
        "tax_rate.created", "tax.calculated", "payment.succeeded", "subscription.created",
        "tax_rate.archived",
    ]  # fmt: skip
    events = [e for o in outcomes for e in outcome_to_ledger_events(o)]
    types = [(e.entity_type, e.entity_id) for e in events]
    assert (EntityType.TAX_RATE, "vat") in types and (EntityType.TAX_CALCULATION, calc_id) in types
    result = await write_events(app_engine, events, keyring=keyring)
    assert result.events_written == len(events)
    async with tenant_session(app_engine, t) as s:
        stored = (await s.scalars(select(Event).where(Event.tenant_id == t))).all()
        by_id = {(e.entity_type, e.entity_id): e for e in stored}
        payment = (await s.scalars(select(Payment))).one()
        invoice = (await s.scalars(select(Invoice))).one()
    assert ("tax_calculation", calc_id) in by_id and ("tax_rate", "vat") in by_id
    assert (payment.amount, invoice.amount) == (1200, 1200)
    # The tax in the rows (0015's columns) as in the stored events.
    assert (payment.amount_tax, payment.tax_calculation_id) == (200, calc_id)
    assert (invoice.subtotal, invoice.tax) == (1000, 200)
    async with tenant_session(app_engine, t) as s:
        rate = (await s.scalars(select(TaxRate))).one()
        calc = (await s.scalars(select(TaxCalculation))).one()
    assert (rate.status, rate.percentage, calc.amount_tax, calc.tax_by_rate) == (
        "archived", "20", 200, {"vat": 200}
    )  # fmt: skip
    assert (await verify_audit(app_engine, t, keyring)).problems == []
    pay_event = by_id[("payment", "p1")]
    assert pay_event.data["amount_tax"] == 200 and pay_event.data["tax_calculation_id"] == calc_id


async def test_a_tenant_with_only_tax_events_verifies(
    redis_url: str, app_engine: AsyncEngine, keyring: MasterKeyring
) -> None:
    """Tax rates and calculations have tables (0015): their events are applied, with
    audit entries, none counted stale (h74j counted neither while they had no table), and
    the tenant's chain verifies."""
    async with running_harness(redis_url) as h:
        t = h.add_tenant()
        outcomes = [
            await h.send("tax_rate.create", t, {**VAT, "tax_rate_id": "vat"}),
            await h.send(
                "tax.calculate",
                t,
                {
                    "currency": "GBP",
                    "tax_rate_ids": ["vat"],
                    "line_items": [{"amount": 1000, "reference": "sku"}],
                },
            ),
            await h.send("tax_rate.archive", t, {"tax_rate_id": "vat"}),
        ]
    assert [kind(o) for o in outcomes] == [
        "tax_rate.created",
        "tax.calculated",
        "tax_rate.archived",
    ]
    events = [e for o in outcomes for e in outcome_to_ledger_events(o)]
    result = await write_events(app_engine, events, keyring=keyring)
    assert (result.events_written, result.entities_applied, result.entities_stale) == (3, 2, 0)
    async with tenant_session(app_engine, t) as s:
        audits = await s.scalar(select(func.count()).select_from(AuditLog))
    assert audits == 3
    assert (await verify_audit(app_engine, t, keyring)).problems == []
