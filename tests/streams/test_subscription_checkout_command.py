"""subscription.create names exactly one of a saved payment_method_id and the token
"checkout" (a Paddle subscription's customer pays the first period at Paddle Checkout)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from paystream.streams.commands import CreateSubscription

_BASE = {"customer_id": "cus_1", "amount": 1200, "currency": "USD", "interval": "month"}


def test_checkout_or_a_saved_method_exactly_one() -> None:
    assert CreateSubscription(**_BASE, payment_method_token="checkout").payment_method_id is None
    assert CreateSubscription(**_BASE, payment_method_id="pm_1").payment_method_token is None
    for wrong in ({}, {"payment_method_id": "pm_1", "payment_method_token": "checkout"}):
        with pytest.raises(ValidationError, match="exactly one"):
            CreateSubscription(**_BASE, **wrong)
    with pytest.raises(ValidationError):
        CreateSubscription(**_BASE, payment_method_token="tok_visa")
