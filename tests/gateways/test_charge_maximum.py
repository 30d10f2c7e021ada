"""Stripe's largest charge: eight digits in minor units in every currency but IDR, which
takes twelve (docs.stripe.com/currencies, "Minimum and maximum charge amounts": "up to
twelve digits for IDR (for example, a value of 999999999999 for a charge of
9,999,999,999.99 IDR)"). Review h64a: the simulator refused Rp 1,500,000.00 (about
USD 95), which Stripe (here localstripe) takes."""

from __future__ import annotations

import uuid

import pytest

from paystream.gateways.base import CreatePayment, PaymentStatus
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.money import Money
from tests.gateways.harness import Harness, over_gateways


@over_gateways(paddle_lacks="Paddle takes no IDR")
async def test_an_idr_charge_over_eight_digits_is_taken(harness: Harness) -> None:
    req = CreatePayment(
        amount=Money(amount=150_000_000, currency="IDR"),  # Rp 1,500,000.00
        provider_payment_method_id=await harness.token("pm_card_visa"),
    )
    res = await harness.gateway.create_payment(req, idempotency_key=f"idem-{uuid.uuid4().hex}")
    assert res.status is PaymentStatus.SUCCEEDED
    assert res.amount == Money(amount=150_000_000, currency="IDR")


@pytest.mark.parametrize("harness", ["simulator"], indirect=True)
async def test_a_ugx_charge_past_stripes_cap_in_its_hundredths_is_refused(harness: Harness) -> None:
    """Stripe's eight digits count UGX in hundredths: 99,999,999 is 999,999.99 UGX. The
    simulator counted its cap in whole shillings and took up to 99,999,999 (review h67c)."""
    token = await harness.token("pm_card_visa")
    over = CreatePayment(
        amount=Money(amount=1_000_000, currency="UGX"), provider_payment_method_id=token
    )
    with pytest.raises(GatewayError) as info:
        await harness.gateway.create_payment(over, idempotency_key=f"idem-{uuid.uuid4().hex}")
    assert info.value.code is ErrorCode.INVALID_REQUEST
    at_cap = CreatePayment(
        amount=Money(amount=999_999, currency="UGX"), provider_payment_method_id=token
    )
    res = await harness.gateway.create_payment(at_cap, idempotency_key=f"idem-{uuid.uuid4().hex}")
    assert res.status is PaymentStatus.SUCCEEDED
