"""A Paddle free trial's price: held to the command's amount at its checkout (whose total
is 0 at any price). Against the FAKE Paddle (tests/fixtures/paddle_fake.py)."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.errors import ErrorCode, GatewayError
from tests.gateways.paddle_gateway.test_subscriptions import (
    _customer,
    _plan,
)
from tests.gateways.paddle_gateway.wire import LosingClient, gateway, key


class _Repriced(LosingClient):
    """Paddle's answer to the checkout's POST with its item at another unit price (a
    fault, or the object changed at Paddle): a trial's total stays 0."""

    async def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        answer = await super().call(method, path, **kw)
        if (method, path) == ("POST", "transactions"):
            answer["data"]["items"][0]["price"]["unit_price"]["amount"] = "100"
        return answer


async def test_a_trial_checkout_at_another_price_is_not_answered_as_made(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    customer = await _customer(gw)
    gw._client = _Repriced(gw._client, "POST", "nothing", 0)
    with pytest.raises(GatewayError) as refused:
        await gw.create_subscription(_plan(customer=customer, trial_days=7), idempotency_key=key())
    assert refused.value.code is ErrorCode.INVALID_STATE
    assert "1.00 USD" in refused.value.message and "12.00 USD" in refused.value.message
    await gw.aclose()
