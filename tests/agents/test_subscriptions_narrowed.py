"""A tenant's `capabilities` option narrows what it may START (review h73u finding 2):
narrowed to leave `subscriptions` out after it subscribed customers, its live
subscriptions could no longer be canceled (the provider kept billing each period, and
paystream answered the cancel `unsupported`) nor read back (each Stripe webhook's
refresh refused). The same held for `payments`: an authorization could not be released
nor a payment read back. Stopping or reading back what the provider already holds needs
only the provider's capability (gateways/base.py UNNARROWED_OPERATIONS)."""

from __future__ import annotations

import pytest

from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio
DAY = 24 * 3600


async def test_a_live_subscription_can_be_canceled_after_the_capability_is_narrowed(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    await harness.send("customer.create", t, {"customer_id": "c1"})
    await harness.send(
        "payment_method.attach", t,
        {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "m1"},
    )  # fmt: skip
    plan = {"customer_id": "c1", "payment_method_id": "m1", "amount": 1500, "currency": "EUR"}
    made = await harness.send(
        "subscription.create", t, {"subscription_id": "s1", "interval": "month", **plan}
    )
    assert kind(made) == "subscription.created", data(made)
    gateway = harness.pool.get(Tenant.model_validate(harness.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    # The operator narrows the tenant (no new subscriptions).
    narrowed = {"capabilities": ["customers", "payment_methods", "payments", "refunds"]}
    harness.tenants[t] = {**harness.tenants[t], "gateway_options": narrowed}
    refused = await harness.send(
        "subscription.create", t, {"subscription_id": "s2", "interval": "month", **plan}
    )
    assert data(refused)["reason"] == "unsupported", data(refused)
    # Renewed at its provider: read back all the same (a Stripe webhook's refresh too).
    await gateway.advance_clock(32 * DAY)
    renewed = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert kind(renewed) == "subscription.updated", data(renewed)
    assert len([r for r in data(renewed)["related"] if r["entity_type"] == "invoice"]) == 1
    # Stopping a charge that recurs is never refused for want of the capability to start one.
    out = await harness.send("subscription.cancel", t, {"subscription_id": "s1"})
    assert kind(out) == "subscription.canceled", data(out)


async def test_an_authorization_can_be_released_after_payments_are_narrowed_out(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    auth = await harness.send(
        "payment.create", t,
        {"payment_id": "p1", "amount": 900, "currency": "EUR",
         "payment_method_token": "pm_card_visa", "capture": "manual"},
    )  # fmt: skip
    assert kind(auth) == "payment.authorized", data(auth)
    narrowed = {"capabilities": ["customers", "payment_methods", "refunds", "manual_capture"]}
    harness.tenants[t] = {**harness.tenants[t], "gateway_options": narrowed}
    refused = await harness.send(
        "payment.create", t,
        {"payment_id": "p2", "amount": 900, "currency": "EUR",
         "payment_method_token": "pm_card_visa"},
    )  # fmt: skip
    assert data(refused)["reason"] == "unsupported", data(refused)
    read = await harness.send("payment.refresh", t, {"payment_id": "p1"})
    assert kind(read) != "command.rejected", data(read)
    released = await harness.send("payment.cancel", t, {"payment_id": "p1"})
    assert kind(released) == "payment.canceled", data(released)
