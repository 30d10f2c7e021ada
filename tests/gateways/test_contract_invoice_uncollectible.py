"""An open invoice written off (Stripe's mark_uncollectible), the same at the simulator and
at Stripe (localstripe, its ``/mark_uncollectible`` a FAKE from Stripe's reference in
tests/fixtures/localstripe_server.py): an open invoice only; sent again under its key, or
once its key's answer is gone, uncollectible is the answer; still payable, and
voidable (docs.stripe.com/api/invoices/mark_uncollectible); Square and Paddle lack it."""

from __future__ import annotations

import pytest

from paystream.gateways.base import (
    InvoiceStatus,
    MarkInvoiceUncollectible,
    PayInvoice,
    RetrieveInvoice,
    VoidInvoice,
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


async def _written_off(h: Harness) -> str:
    opened = await finalized(h, await draft_invoice(h))
    req = MarkInvoiceUncollectible(provider_invoice_id=opened.provider_invoice_id)
    k = key()
    marked = await h.gateway.mark_invoice_uncollectible(req, idempotency_key=k)
    assert (marked.status, marked.amount) == (InvoiceStatus.UNCOLLECTIBLE, usd(3500)), marked
    for again_key in (k, key()):
        again = await h.gateway.mark_invoice_uncollectible(req, idempotency_key=again_key)
        assert again.status is InvoiceStatus.UNCOLLECTIBLE, again
    read = await h.gateway.retrieve_invoice(
        RetrieveInvoice(provider_invoice_id=opened.provider_invoice_id), idempotency_key=key()
    )
    assert read.status is InvoiceStatus.UNCOLLECTIBLE
    return opened.provider_invoice_id


async def _no_write_off(h: Harness, provider_invoice_id: str) -> None:
    """A write-off of the invoice (not open: a draft, paid or void) is refused."""
    req = MarkInvoiceUncollectible(provider_invoice_id=provider_invoice_id)
    await expect(
        ErrorCode.INVALID_STATE, h.gateway.mark_invoice_uncollectible(req, idempotency_key=key())
    )


@over_gateways(square_lacks=SQUARE_NO_INVOICES, paddle_lacks=PADDLE_NO_INVOICES)
async def test_an_invoice_written_off_may_still_be_paid(harness: Harness) -> None:
    invoice = await _written_off(harness)
    req = PayInvoice(provider_invoice_id=invoice)
    paid = await harness.gateway.pay_invoice(req, idempotency_key=key())
    assert (paid.status, paid.amount) == (InvoiceStatus.PAID, usd(3500)), paid
    assert paid.provider_payment_id
    await _no_write_off(harness, invoice)


@over_gateways(square_lacks=SQUARE_NO_INVOICES, paddle_lacks=PADDLE_NO_INVOICES)
async def test_an_invoice_written_off_may_still_be_voided(harness: Harness) -> None:
    invoice = await _written_off(harness)
    voided = await harness.gateway.void_invoice(
        VoidInvoice(provider_invoice_id=invoice), idempotency_key=key()
    )
    assert voided.status is InvoiceStatus.VOID, voided
    await _no_write_off(harness, invoice)


@over_gateways(square_lacks=SQUARE_NO_INVOICES, paddle_lacks=PADDLE_NO_INVOICES)
async def test_a_draft_is_not_written_off(harness: Harness) -> None:
    draft = await draft_invoice(harness)
    await _no_write_off(harness, draft.provider_invoice_id)
