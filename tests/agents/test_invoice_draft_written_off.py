"""A draft finalized and written off at its provider (in Stripe's dashboard) before
paystream read it back: invoice.refresh, or the webhook's, records it `uncollectible`
(invoice.marked_uncollectible, previous_status draft), after which it is paid or voided
as any written-off invoice. It was refused "an invoice that is draft cannot become
uncollectible" on every read, the record left a draft that could be neither finalized
(the provider's is not a draft), paid nor written off (review h81rb F2)."""

from __future__ import annotations

import pytest

from paystream.gateways import base as gw
from tests.agents.harness import Harness, data, kind, simulator_of
from tests.agents.test_invoices import _charges, _draft

pytestmark = pytest.mark.asyncio


async def test_a_draft_written_off_at_the_provider_is_read_back_and_then_paid(
    harness: Harness,
) -> None:
    h = harness
    t = h.add_tenant(limits={"daily_payment_volume": {"EUR": 200_000}})
    draft = await _draft(h, t)
    body = {"invoice_id": draft["id"]}
    provider = h.processor.tables.invoices[f"{t}:{draft['id']}"]["provider_invoice_id"]
    sim = simulator_of(h, t)
    await sim.finalize_invoice(
        gw.FinalizeInvoice(provider_invoice_id=provider), idempotency_key="in-its-dashboard"
    )
    await sim.mark_invoice_uncollectible(
        gw.MarkInvoiceUncollectible(provider_invoice_id=provider), idempotency_key="then-off"
    )
    read = await h.send("invoice.refresh", t, body)
    assert kind(read) == "invoice.marked_uncollectible", data(read)
    assert data(read)["previous_status"] == "draft"
    assert h.processor.tables.invoices[f"{t}:{draft['id']}"]["status"] == "uncollectible"
    paid = await h.send("invoice.pay", t, body)
    assert kind(paid) == "invoice.paid", data(paid)
    assert len(await _charges(h, t)) == 1
    assert h.processor.limits.table[f"{t}:limits"]["volume"] == {"EUR": 50_000}


async def test_a_draft_finalized_at_the_provider_reads_back_as_invoice_updated(
    harness: Harness,
) -> None:
    """What README and AsyncAPI say `invoice.updated` means (review h81rb F4): a refresh
    emits no `invoice.finalized`; a draft finalized at the provider (its dashboard) reads
    back as `invoice.updated`, previous_status draft, its status open."""
    h = harness
    t = h.add_tenant()
    draft = await _draft(h, t)
    provider = h.processor.tables.invoices[f"{t}:{draft['id']}"]["provider_invoice_id"]
    await simulator_of(h, t).finalize_invoice(
        gw.FinalizeInvoice(provider_invoice_id=provider), idempotency_key="in-its-dashboard"
    )
    read = await h.send("invoice.refresh", t, {"invoice_id": draft["id"]})
    assert kind(read) == "invoice.updated", data(read)
    assert (data(read)["previous_status"], data(read)["object"]["status"]) == ("draft", "open")
    assert h.processor.tables.invoices[f"{t}:{draft['id']}"]["status"] == "open"
