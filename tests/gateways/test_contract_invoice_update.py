"""A draft invoice changed (Stripe's invoice update and invoice items), the same at the
simulator and at Stripe (localstripe, its invoice update, ``GET
/v1/invoiceitems?invoice=`` and ``DELETE /v1/invoiceitems/{id}`` FAKEs from Stripe's
reference in tests/fixtures/localstripe_server.py): its lines replaced whole, its new
total answered and then charged; sent again under its key, the same lines, none twice;
an open invoice refused; Square and Paddle lack it."""

from __future__ import annotations

import pytest

from paystream.gateways.base import (
    InvoiceLine,
    InvoiceStatus,
    PayInvoice,
    UpdateInvoice,
)
from paystream.gateways.errors import ErrorCode
from tests.gateways.harness import Harness, over_gateways
from tests.gateways.test_contract import (
    PADDLE_NO_INVOICES,
    SQUARE_NO_INVOICES,
    draft_invoice,
    expect,
    finalized,
    key,
    usd,
)

pytestmark = pytest.mark.asyncio

NEW_LINES = (
    InvoiceLine(description="Design", unit_amount=2000, quantity=3),
    InvoiceLine(description="Travel", unit_amount=750),
)


@over_gateways(square_lacks=SQUARE_NO_INVOICES, paddle_lacks=PADDLE_NO_INVOICES)
async def test_a_drafts_lines_are_replaced_once_and_charged(harness: Harness) -> None:
    draft = await draft_invoice(harness)
    assert draft.amount == usd(3500)
    req = UpdateInvoice(
        provider_invoice_id=draft.provider_invoice_id,
        currency="USD",
        lines=NEW_LINES,
        description="March",
        metadata={"po": "p-9"},
    )
    k = key()
    changed = await harness.gateway.update_invoice(req, idempotency_key=k)
    assert (changed.status, changed.amount) == (InvoiceStatus.DRAFT, usd(6750)), changed
    # Sent again under its key (a redelivery, a re-drive): the same lines, none added.
    again = await harness.gateway.update_invoice(req, idempotency_key=k)
    assert again.amount == usd(6750), again
    opened = await finalized(harness, changed)
    assert (opened.status, opened.amount) == (InvoiceStatus.OPEN, usd(6750)), opened
    paid = await harness.gateway.pay_invoice(
        PayInvoice(provider_invoice_id=draft.provider_invoice_id), idempotency_key=key()
    )
    assert (paid.status, paid.amount) == (InvoiceStatus.PAID, usd(6750)), paid
    # Finalized: its total is fixed.
    await expect(
        ErrorCode.INVALID_STATE, harness.gateway.update_invoice(req, idempotency_key=key())
    )


@over_gateways(square_lacks=SQUARE_NO_INVOICES, paddle_lacks=PADDLE_NO_INVOICES)
async def test_an_open_invoice_is_not_changed(harness: Harness) -> None:
    opened = await finalized(harness, await draft_invoice(harness))
    req = UpdateInvoice(
        provider_invoice_id=opened.provider_invoice_id, currency="USD", lines=NEW_LINES
    )
    await expect(
        ErrorCode.INVALID_STATE, harness.gateway.update_invoice(req, idempotency_key=key())
    )
