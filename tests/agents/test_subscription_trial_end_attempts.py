"""The fraud rules count a trial ended now (`subscription.update` ``trial_end: "now"``)
as a payment attempt, as a `subscription.create`'s first charge: paid, an attempt the
issuer answered; declined, a card decline of its customer and payment method (card
testing through trials: create them, end them now). A trial ending on its own, read by
a refresh, is a renewal (the provider's schedule): no attempt; nor is a moved end (no
charge). On the real simulator (the agents' harness)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.agents.harness import Harness, data, kind, simulator_of
from tests.agents.test_subscription_update import DAY, _attach, _subscribed, _update
from tests.insights.test_disputes_counted import _observe, _outcome

pytestmark = pytest.mark.asyncio


def _seen(t: str, out: Any, command_type: str = "subscription.update") -> Any:
    said = {k: v for k, v in data(out).items() if k not in ("tenant_id", "command_id")}
    return _observe(_outcome(kind(out), data(out)["command_id"], command_type, said, tenant=t))


async def test_a_trial_ended_now_and_paid_is_an_answered_attempt(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t, trial_days=14)
    out = await _update(harness, t, trial_end="now")
    assert kind(out) == "subscription.updated" and data(out)["trial_end_charge"] == "paid"
    seen = _seen(t, out)
    assert (seen.attempt, seen.answered, seen.card_declined) == (True, True, False), seen
    assert (seen.customer_id, seen.payment_method_id) == ("c1", "m1"), seen


async def test_a_trial_ended_now_and_declined_is_a_card_decline(harness: Harness) -> None:
    t = harness.add_tenant()
    assert kind(await harness.send("customer.create", t, {"customer_id": "c1"})) == (
        "customer.created"
    )
    await _attach(harness, t, "c1", "m1", token="pm_card_chargeCustomerFail")
    body = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1",
            "amount": 1500, "currency": "EUR", "interval": "month", "trial_days": 7}  # fmt: skip
    assert kind(await harness.send("subscription.create", t, body)) == "subscription.created"
    out = await _update(harness, t, trial_end="now")
    assert data(out)["object"]["status"] == "past_due", data(out)
    assert data(out)["trial_end_charge"] == "declined"
    seen = _seen(t, out)
    assert (seen.attempt, seen.answered, seen.card_declined) == (True, True, True), seen
    assert (seen.customer_id, seen.payment_method_id) == ("c1", "m1"), seen


async def test_a_trial_ending_on_its_own_or_moved_is_no_attempt(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t, trial_days=14)
    moved = await _update(harness, t, trial_end=int(time.time()) + 3 * DAY)
    assert kind(moved) == "subscription.updated" and "trial_end_charge" not in data(moved)
    assert not _seen(t, moved).attempt
    await simulator_of(harness, t).advance_clock(4 * DAY)
    read = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert (data(read)["previous_status"], data(read)["object"]["status"]) == (
        "trialing",
        "active",
    ), data(read)
    assert "trial_end_charge" not in data(read)
    seen = _seen(t, read, "subscription.refresh")
    assert not seen.attempt and seen.invoices_paid == (("EUR", 1500),), seen
