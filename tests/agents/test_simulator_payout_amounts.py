"""The simulator refuses a payout Stripe refuses (review h74t F1): a three-decimal
currency not in multiples of 10 minor units, HUF or TWD not in whole units. It paid them
out (`payout.created`, then paid), so a tenant's dev stack passed what Stripe refuses in
production. One rule for both (stripe_rules.payout_amount_problem)."""

from __future__ import annotations

import pytest

from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio
DAY = 24 * 3600


def _gateway(h: Harness, tenant: str) -> SimulatorGateway:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


async def _settled(h: Harness, t: str, amount: int, currency: str) -> None:
    out = await h.send(
        "payment.create",
        t,
        {"amount": amount, "currency": currency, "payment_method_token": "pm_card_visa"},
    )
    assert kind(out) == "payment.succeeded", data(out)
    await _gateway(h, t).advance_clock(2 * DAY)


@pytest.mark.parametrize(
    ("currency", "refused", "paid"),
    [("KWD", 1005, 1010), ("HUF", 150, 200), ("TWD", 1099, 1100)],
)
async def test_the_simulator_refuses_a_payout_stripe_refuses(
    harness: Harness, currency: str, refused: int, paid: int
) -> None:
    t = harness.add_tenant()
    await _settled(harness, t, 50000, currency)
    out = await harness.send("payout.create", t, {"amount": refused, "currency": currency})
    assert kind(out) == "command.rejected", (kind(out), data(out))
    assert data(out)["reason"] == "validation_error", data(out)
    assert str(refused) in data(out)["message"], data(out)
    # The same balance pays out an amount Stripe takes.
    ok = await harness.send("payout.create", t, {"amount": paid, "currency": currency})
    assert kind(ok) == "payout.created", data(ok)
