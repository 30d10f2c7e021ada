"""A one-off invoice and its customer's balance, the same at the simulator and at Stripe
(localstripe, as tests/fixtures/localstripe_server.py has Stripe's Invoices API), as
Stripe documents them (review h79r_c F3, F4):

* the balance is applied as an invoice is finalized; what it leaves due under the
  currency's minimum charge (USD 0.50) is not charged: the invoice is paid, its amount 0,
  and that is added to the customer's balance as a debit their next invoice bills
  (docs.stripe.com/api/invoices);
* an invoice voided gives back the balance applied to it
  (docs.stripe.com/changelog/2019-12-03/customer-balances-returned-voided-invoices)."""

from __future__ import annotations

import pytest

from paystream.gateways.base import FinalizeInvoice, InvoiceStatus, VoidInvoice
from tests.gateways.harness import Harness, over_gateways
from tests.gateways.test_contract import (
    PADDLE_NO_INVOICES,
    SQUARE_NO_INVOICES,
    invoice_request,
    key,
    usd,
)

pytestmark = pytest.mark.asyncio


async def _credited_draft(h: Harness, credit: int) -> tuple[str, str]:
    """A draft of 35.00 USD, its customer holding ``credit``: (its provider's id, the
    customer's)."""
    req = await invoice_request(h)
    await h.credit(req.provider_customer_id, usd(credit))
    draft = await h.gateway.create_invoice(req, idempotency_key=key())
    return draft.provider_invoice_id, req.provider_customer_id


@over_gateways(square_lacks=SQUARE_NO_INVOICES, paddle_lacks=PADDLE_NO_INVOICES)
async def test_a_balance_leaving_less_than_the_minimum_charge_pays_the_invoice(
    harness: Harness,
) -> None:
    invoice, customer = await _credited_draft(harness, 3_480)  # (0.20 left: under 0.50)
    req = FinalizeInvoice(provider_invoice_id=invoice)
    paid = await harness.gateway.finalize_invoice(req, idempotency_key=key())
    assert (paid.status, paid.amount) == (InvoiceStatus.PAID, usd(0)), paid
    assert not paid.provider_payment_id  # (nothing charged)
    assert await harness.customer_credit(customer, "USD") == -20  # (a debit carried)


@over_gateways(square_lacks=SQUARE_NO_INVOICES, paddle_lacks=PADDLE_NO_INVOICES)
async def test_a_balance_leaving_the_minimum_charge_due_leaves_the_invoice_open(
    harness: Harness,
) -> None:
    invoice, customer = await _credited_draft(harness, 3_450)  # (0.50 left: chargeable)
    req = FinalizeInvoice(provider_invoice_id=invoice)
    opened = await harness.gateway.finalize_invoice(req, idempotency_key=key())
    assert (opened.status, opened.amount) == (InvoiceStatus.OPEN, usd(50)), opened
    assert await harness.customer_credit(customer, "USD") == 0


@over_gateways(square_lacks=SQUARE_NO_INVOICES, paddle_lacks=PADDLE_NO_INVOICES)
async def test_voiding_an_invoice_gives_back_the_balance_applied_to_it(harness: Harness) -> None:
    invoice, customer = await _credited_draft(harness, 1_000)
    opened = await harness.gateway.finalize_invoice(
        FinalizeInvoice(provider_invoice_id=invoice), idempotency_key=key()
    )
    assert (opened.status, opened.amount) == (InvoiceStatus.OPEN, usd(2_500)), opened
    assert await harness.customer_credit(customer, "USD") == 0
    void = VoidInvoice(provider_invoice_id=invoice)
    k = key()
    voided = await harness.gateway.void_invoice(void, idempotency_key=k)
    assert voided.status is InvoiceStatus.VOID
    assert await harness.customer_credit(customer, "USD") == 1_000
    # Voided again (under its key, or a new one): given back once.
    for again in (k, key()):
        await harness.gateway.void_invoice(void, idempotency_key=again)
    assert await harness.customer_credit(customer, "USD") == 1_000
