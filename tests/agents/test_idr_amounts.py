"""IDR amounts Stripe takes (up to twelve digits in minor units) go through the pipeline
(review h64a: the simulator refused them past eight digits, and paystream's own command
bound past eleven)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from paystream.money import MAX_MINOR_AMOUNT
from paystream.streams.commands import CreatePayment
from paystream.tenancy.limits import TenantLimits
from tests.agents.harness import Harness, data, kind


def _idr(amount: int) -> dict[str, object]:
    return {"amount": amount, "currency": "IDR", "payment_method_token": "pm_card_visa"}


@pytest.mark.asyncio
@pytest.mark.parametrize("amount", [150_000_000, 999_999_999_999])
async def test_an_idr_payment_stripe_takes_succeeds_on_the_simulator(
    harness: Harness, amount: int
) -> None:
    t = harness.add_tenant()
    out = await harness.send("payment.create", t, _idr(amount))
    assert kind(out) == "payment.succeeded", data(out).get("message")
    obj = data(out)["object"]
    assert obj["amount"] == amount and obj["currency"] == "IDR" and obj["amount_captured"] == amount


@pytest.mark.asyncio
async def test_thirteen_digits_are_refused_as_invalid_data(harness: Harness) -> None:
    t = harness.add_tenant()
    out = await harness.send("payment.create", t, _idr(MAX_MINOR_AMOUNT + 1))
    assert kind(out) == "command.rejected"
    assert data(out)["reason"] == "validation_error"


def test_the_command_bound_is_stripes_idr_maximum() -> None:
    assert MAX_MINOR_AMOUNT == 999_999_999_999
    assert CreatePayment.model_validate(_idr(MAX_MINOR_AMOUNT)).amount == MAX_MINOR_AMOUNT
    with pytest.raises(ValidationError):
        CreatePayment.model_validate(_idr(MAX_MINOR_AMOUNT + 1))


def test_a_daily_volume_cap_of_a_thousand_maximum_payments_is_kept() -> None:
    """The cap's bound (a thousand maximum payments) stays exact in a JSON reader's doubles."""
    cap = MAX_MINOR_AMOUNT * 1000
    assert cap < 2**53
    limits = TenantLimits(daily_payment_volume={"IDR": cap})
    assert limits.daily_payment_volume == {"IDR": cap}
    with pytest.raises(ValidationError):
        TenantLimits(daily_payment_volume={"IDR": cap + 1})
