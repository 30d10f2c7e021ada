"""A Stripe tenant's invoice.finalize sent while an invoice.update of the draft's lines is
parked between its item calls (review h81re F3): Stripe's replacement is several calls
(the old items deleted, then the new added), so the draft held some of each, or none,
and finalized so it billed them (none: amount_due 0, paid at once, the customer never
billed). Now the finalize reads the draft's items first: not the recorded lines, it is
refused `invalid_state`, not remembered, the draft left a draft; once the update is
re-driven, the same finalize bills the new lines. A finalize whose answer was lost (the
invoice open at Stripe already) is answered from its key, never refused by the read."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways import base as gw
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.stripe.gateway import StripeGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind
from tests.agents.test_invoice_update_stripe import (
    _ASKED,
    NEW_LINES,
    NEW_TOTAL,
    _draft,
    _get,
    _items,
    _stripe_tenant,
)
from tests.agents.test_invoices_stripe import sh  # noqa: F401 (a fixture)
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("added", [0, 1], ids=["none-added", "one-added"])
async def test_a_finalize_during_a_parked_update_is_refused_then_applied(
    sh: Harness,  # noqa: F811
    localstripe_url: str,
    monkeypatch: pytest.MonkeyPatch,
    added: int,
) -> None:
    t = _stripe_tenant(sh)
    draft, provider_invoice = await _draft(sh, t)
    iid = draft["id"]
    real = StripeGateway._add_item

    async def cut(self: StripeGateway, item: dict[str, Any], key: str) -> None:
        # (the update's lines from `added` on never reach Stripe while parked)
        if key.startswith(f"ps:{t}:up") and not any(key.endswith(f"line{n}") for n in range(added)):
            raise GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, "cut", provider="stripe",
                               retryable=True)  # fmt: skip
        await real(self, item, key)

    monkeypatch.setattr(StripeGateway, "_add_item", cut)
    update = {"invoice_id": iid, "line_items": NEW_LINES}
    emits = await sh.processor.process(_command(t, "invoice.update", update, "up"))
    assert [e.topic for e in emits] == [sh.settings.retry_topic]  # (parked halfway)
    assert len(await _items(localstripe_url, provider_invoice)) == added
    fin = {"invoice_id": iid}
    out = await _answer(sh, _command(t, "invoice.finalize", fin, "fin"))
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == "invalid_state"
    assert "update of its lines is unfinished" in data(out)["message"]
    held = await _get(localstripe_url, f"/v1/invoices/{provider_invoice}")
    assert held["status"] == "draft"
    # The update re-driven (`dlq replay`), then the same finalize (not remembered).
    monkeypatch.setattr(StripeGateway, "_add_item", real)
    done = await _answer(sh, _command(t, "invoice.update", update, "up"))
    assert kind(done) == "invoice.updated", data(done)
    assert await _items(localstripe_url, provider_invoice) == _ASKED
    # (sent again: a new record of the same command id, as a tenant's resend is)
    out = await _answer(sh, _command(t, "invoice.finalize", fin, "fin"))
    assert kind(out) == "invoice.finalized", data(out)
    assert data(out)["object"]["amount"] == NEW_TOTAL
    held = await _get(localstripe_url, f"/v1/invoices/{provider_invoice}")
    assert (held["status"], held["amount_due"]) == ("open", NEW_TOTAL)


async def test_a_finalize_sent_again_once_open_is_answered_not_refused(
    sh: Harness,  # noqa: F811
    localstripe_url: str,
) -> None:
    """Its answer lost, a finalize is sent again under its key with the invoice open:
    the items are not compared (they can change no more), /finalize answers from its key,
    even with lines that are not the draft's (a record behind Stripe's)."""
    t = _stripe_tenant(sh)
    _, provider_invoice = await _draft(sh, t)
    gateway = sh.pool.get(Tenant.model_validate(sh.tenants[t]))
    lines = (
        gw.InvoiceLine(description="Hours", unit_amount=1500, quantity=2),
        gw.InvoiceLine(description="Fee", unit_amount=1500),
    )
    key = f"ps:{t}:fin-lost"
    first = await gateway.finalize_invoice(
        gw.FinalizeInvoice(provider_invoice_id=provider_invoice, lines=lines),
        idempotency_key=key,
    )
    assert (first.status, first.amount.amount) == (gw.InvoiceStatus.OPEN, 4500)
    other = (gw.InvoiceLine(description="Other", unit_amount=100),)
    again = await gateway.finalize_invoice(
        gw.FinalizeInvoice(provider_invoice_id=provider_invoice, lines=other),
        idempotency_key=key,
    )
    assert (again.status, again.amount.amount) == (gw.InvoiceStatus.OPEN, 4500)
    # A draft's other lines are refused before /finalize (the gateway's own check).
    _, second_invoice = await _draft(sh, t)
    with pytest.raises(GatewayError) as refused:
        await gateway.finalize_invoice(
            gw.FinalizeInvoice(provider_invoice_id=second_invoice, lines=other),
            idempotency_key=f"ps:{t}:fin-other",
        )
    assert refused.value.code is ErrorCode.INVALID_STATE
    held = await _get(localstripe_url, f"/v1/invoices/{second_invoice}")
    assert held["status"] == "draft"
