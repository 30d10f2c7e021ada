"""A subscription started at checkout (``payment_method_token: "checkout"``) is Paddle's
only: another gateway's tenant is refused before any provider call, nothing recorded."""

from __future__ import annotations

import pytest

from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio


async def test_checkout_is_refused_where_the_gateway_bills_a_saved_card(harness: Harness) -> None:
    t = harness.add_tenant()
    made = await harness.send("customer.create", t, {"customer_id": "c1"})
    assert kind(made) == "customer.created", data(made)
    gateway = harness.pool.get(Tenant.model_validate(harness.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    before = await gateway.effects()
    out = await harness.send(
        "subscription.create",
        t,
        {
            "subscription_id": "s1",
            "customer_id": "c1",
            "payment_method_token": "checkout",
            "amount": 1500,
            "currency": "EUR",
            "interval": "month",
        },
    )
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == "unsupported" and "Paddle Checkout" in data(out)["message"]
    assert await gateway.effects() == before
    assert f"{t}:s1" not in harness.tables.subscriptions
