"""Review h73l: a subscription's renewals once its customer is deleted or its card
detached (the simulator kept charging the card it copied at create)."""

from __future__ import annotations

import pytest

from tests.agents.harness import Harness, data, kind
from tests.agents.test_subscriptions import DAY, _charges, _customer, _gateway, _subscribe

pytestmark = pytest.mark.asyncio


async def test_a_deleted_customer_is_not_billed_again(harness: Harness) -> None:
    t = harness.add_tenant()
    await _customer(harness, t)
    assert kind(await _subscribe(harness, t, interval="week")) == "subscription.created"
    gone = await harness.send("customer.delete", t, {"customer_id": "c1"})
    assert kind(gone) == "customer.deleted", data(gone)
    await _gateway(harness, t).advance_clock(3 * 7 * DAY + 60)
    read = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    # As Stripe: deleting a customer cancels their subscriptions at once.
    assert len(await _charges(harness, t)) == 1, "renewals charged to a deleted customer"
    assert kind(read) == "subscription.canceled", data(read)


async def test_a_detached_card_is_not_charged_for_a_renewal(harness: Harness) -> None:
    t = harness.add_tenant()
    await _customer(harness, t)
    assert kind(await _subscribe(harness, t, interval="week")) == "subscription.created"
    off = await harness.send("payment_method.detach", t, {"payment_method_id": "m1"})
    assert kind(off) == "payment_method.detached", data(off)
    await _gateway(harness, t).advance_clock(7 * DAY + 60)
    read = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert len(await _charges(harness, t)) == 1, "a renewal charged to a detached card"
    # Nothing to charge: the renewal's invoice stays open, the subscription past_due.
    assert data(read)["object"]["status"] == "past_due", data(read)
