"""Review h78o: one-off invoices at the gateways (the simulator, and Stripe's through
localstripe as tests/fixtures/localstripe_server.py patches it): M2, a draft is not
voided at Stripe but deleted (the fake refuses its /void as Stripe does; the gateway's
void of a draft is test_contract's test_an_invoice_voided_stays_void); M3, an invoice
Stripe cannot charge is refused before any call, as the simulator refuses it."""

from __future__ import annotations

import aiohttp
import pytest

from paystream.gateways.base import CreateInvoice, InvoiceLine, InvoiceStatus
from paystream.gateways.errors import ErrorCode, GatewayError
from tests.fixtures.localstripe import LOCALSTRIPE_API_KEY
from tests.gateways.harness import Harness, over_gateways
from tests.gateways.test_contract import (
    PADDLE_NO_INVOICES,
    SQUARE_NO_INVOICES,
    draft_invoice,
    finalized,
    invoice_request,
    key,
)

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("harness", ["stripe"], indirect=True)
async def test_M2_stripe_voids_no_draft_as_the_fake_does(harness: Harness) -> None:
    """Stripe's /void "only applies to finalized invoices" (docs.stripe.com/api/invoices/
    void); a draft is deleted instead (DELETE /v1/invoices/{id}: "Permanently deletes a
    one-off invoice draft"). The fake voided a draft, so invoice.void of a draft passed
    every test here and was refused by Stripe. An open invoice is not deleted."""
    draft = await draft_invoice(harness)
    auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
    url = f"{harness._stripe_url}/v1/invoices/{draft.provider_invoice_id}/void"
    async with aiohttp.ClientSession() as session, session.post(url, headers=auth) as resp:
        status = resp.status
    assert status == 400, f"the fake voided a draft ({status}); Stripe refuses it"
    opened = await finalized(harness, draft)
    async with aiohttp.ClientSession() as session:
        async with session.delete(url.removesuffix("/void"), headers=auth) as resp:
            assert resp.status == 400, "Stripe deletes drafts only"
        async with session.get(url.removesuffix("/void"), headers=auth) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "open"
    assert opened.status is InvoiceStatus.OPEN


@pytest.mark.parametrize(
    ("currency", "unit_amount", "why"),
    [
        # Stripe's minimum charge (stripe_rules.MINIMUM_CHARGE): Stripe marks such an
        # invoice paid without charging and adds its amount to the customer's balance,
        # applied to their next invoice (a subscription's renewal, say).
        ("USD", 30, "below the minimum charge"),
        # A three-decimal currency's charge is a multiple of 10 (stripe_rules
        # three_decimal_problem): payment.create is refused before sending; an invoice
        # line is sent as it is.
        ("KWD", 1005, "not a multiple of 10 in a three-decimal currency"),
    ],
)
@over_gateways(square_lacks=SQUARE_NO_INVOICES, paddle_lacks=PADDLE_NO_INVOICES)
async def test_M3_an_invoice_stripe_cannot_charge_is_refused_as_the_simulator_does(
    harness: Harness, currency: str, unit_amount: int, why: str
) -> None:
    """The simulator refuses at create an invoice whose total Stripe cannot charge
    (simulator/invoices.create_invoice: ops._check_amount on the total); the Stripe
    gateway's create_invoice checks neither rule and makes it."""
    made = await invoice_request(harness)
    req = CreateInvoice(
        provider_customer_id=made.provider_customer_id,
        currency=currency,
        lines=(InvoiceLine(description="Tiny", unit_amount=unit_amount),),
        provider_payment_method_id=made.provider_payment_method_id,
    )
    with pytest.raises(GatewayError) as info:
        await harness.gateway.create_invoice(req, idempotency_key=key())
    assert info.value.code is ErrorCode.INVALID_REQUEST, why
