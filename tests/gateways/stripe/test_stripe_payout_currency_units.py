"""Stripe's units on the payouts path (review h74m, findings 4 and 5).

UGX is in STRIPE_HUNDREDTHS (Stripe's API counts it in hundredths, "for backwards
compatibility"): payment and payout creates in it are refused before the call, but the
balance read took Stripe's UGX amounts as whole shillings, a hundred times the money.
HUF and TWD payouts: Stripe takes only amounts evenly divisible by 100 (its currencies
page, "Special cases": zero-decimal for payouts), which paystream sent and Stripe
refused; now refused before the call, as the three-decimal rule is."""

from __future__ import annotations

import pytest

from paystream.gateways.base import CreatePayout, RetrieveBalance
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.money import Money
from tests.gateways.stripe.test_stripe_payouts import BALANCE, PAYOUT
from tests.gateways.stripe.test_stripe_transport import answer, gateway


async def test_a_ugx_balance_is_read_in_shillings_not_stripes_hundredths() -> None:
    # Stripe: 500 UGX is amount 50000 (its currencies page: "To charge 5 UGX, provide an
    # amount value of 500").
    ugx = {
        **BALANCE,
        "available": [{"amount": 50000, "currency": "ugx", "source_types": {"card": 50000}}],
        "pending": [{"amount": 1200, "currency": "ugx", "source_types": {"card": 1200}}],
    }
    gw, _ = gateway(answer(200, ugx))
    res = await gw.retrieve_balance(RetrieveBalance(), idempotency_key="k")
    assert [(b.currency, b.available, b.pending) for b in res.balances] == [("UGX", 500, 12)]


@pytest.mark.parametrize("currency", ["HUF", "TWD"])
async def test_a_huf_or_twd_payout_not_in_whole_units_is_refused_before_the_call(
    currency: str,
) -> None:
    gw, fake = gateway(answer(200, {**PAYOUT, "currency": currency.lower(), "amount": 12345}))
    with pytest.raises(GatewayError) as info:
        await gw.create_payout(
            CreatePayout(amount=Money(amount=12345, currency=currency)), idempotency_key="k"
        )
    assert info.value.code is ErrorCode.INVALID_REQUEST and not info.value.reached_provider
    assert "evenly divisible by 100" in info.value.message
    assert fake.requests == []


async def test_a_ugx_balance_not_in_whole_shillings_is_not_read() -> None:
    """Not rounded (no such balance should exist): parked as an answer not understood."""
    ugx = {**BALANCE, "available": [{"amount": 50050, "currency": "ugx"}], "pending": []}
    gw, _ = gateway(answer(200, ugx))
    with pytest.raises(GatewayError) as info:
        await gw.retrieve_balance(RetrieveBalance(), idempotency_key="k")
    assert info.value.code is ErrorCode.PROVIDER_UNAVAILABLE, info.value
    assert "not in whole units" in info.value.message


@pytest.mark.parametrize("currency", ["HUF", "TWD"])
async def test_a_huf_or_twd_payout_in_whole_units_is_sent(currency: str) -> None:
    gw, fake = gateway(answer(200, {**PAYOUT, "currency": currency.lower(), "amount": 12300}))
    res = await gw.create_payout(
        CreatePayout(amount=Money(amount=12300, currency=currency)), idempotency_key="k"
    )
    assert res.amount == Money(amount=12300, currency=currency)
    assert len(fake.requests) == 1
