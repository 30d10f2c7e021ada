"""Stripe's largest charge: eight digits in minor units in every currency but IDR, which
takes twelve (docs.stripe.com/currencies, "Minimum and maximum charge amounts": "up to
twelve digits for IDR (for example, a value of 999999999999 for a charge of
9,999,999,999.99 IDR)"). Review h64a: the simulator refused Rp 1,500,000.00 (about
USD 95), which Stripe (here localstripe) takes."""

from __future__ import annotations

import uuid

from paystream.gateways.base import CreatePayment, PaymentStatus
from paystream.money import Money
from tests.gateways.harness import Harness, over_gateways


@over_gateways()
async def test_an_idr_charge_over_eight_digits_is_taken(harness: Harness) -> None:
    req = CreatePayment(
        amount=Money(amount=150_000_000, currency="IDR"),  # Rp 1,500,000.00
        provider_payment_method_id=await harness.token("pm_card_visa"),
    )
    res = await harness.gateway.create_payment(req, idempotency_key=f"idem-{uuid.uuid4().hex}")
    assert res.status is PaymentStatus.SUCCEEDED
    assert res.amount == Money(amount=150_000_000, currency="IDR")
