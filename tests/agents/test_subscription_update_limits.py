"""A tenant's money limits hold a `subscription.update`'s new amount as they hold a
`subscription.create`'s: its per-period charge (with the exclusive tax of the
subscription's rates) against ``max_payment_amount``, its currency against
``only_listed_currencies``. Its data names no currency: the limits read the
subscription from its table. An update that leaves the amount as it is (a payment
method, a cancel at period end, the same amount) passes a cap lowered since."""

from __future__ import annotations

from typing import Any

import pytest

from tests.agents.harness import Harness, data, kind, simulator_of
from tests.agents.test_subscription_limits import _subscribe
from tests.agents.test_subscriptions import _charges, _customer

pytestmark = pytest.mark.asyncio
CAP = {"max_payment_amount": {"USD": 5_000}}


async def _update(h: Harness, t: str, **body: Any) -> Any:
    return await h.send("subscription.update", t, {"subscription_id": "s1", **body})


async def _updates_at_provider(h: Harness, t: str) -> int:
    return sum(1 for e in await simulator_of(h, t).effects() if e.kind == "subscription.updated")


async def test_a_new_amount_over_the_cap_is_refused_as_a_create_of_it(harness: Harness) -> None:
    t = harness.add_tenant(limits=CAP)
    await _customer(harness, t)
    assert kind(await _subscribe(harness, t, "s1", 100)) == "subscription.created"
    over = await _update(harness, t, amount=1_000_000)
    assert kind(over) == "command.rejected", data(over)
    assert data(over)["reason"] == "quota_exceeded", data(over)
    assert data(over)["limit"] == "max_payment_amount" and data(over)["allowed"] == 5_000
    # The refusal a create of that amount gets, word for word.
    created = await _subscribe(harness, t, "s2", 1_000_000)
    assert data(over)["message"] == data(created)["message"], (data(over), data(created))
    assert harness.tables.subscriptions[f"{t}:s1"]["amount"] == 100
    assert await _updates_at_provider(harness, t) == 0
    # Up to the cap it goes through, and is billed from the next period on.
    fits = await _update(harness, t, amount=5_000)
    assert kind(fits) == "subscription.updated", data(fits)
    assert data(fits)["object"]["amount"] == 5_000
    assert [c.amount for c in await _charges(harness, t)] == [100]


async def test_a_cap_lowered_since_stops_no_update_that_keeps_the_amount(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    await _customer(harness, t)
    assert kind(await _subscribe(harness, t, "s1", 9_000)) == "subscription.created"
    harness.tenants[t] = {**harness.tenants[t], "limits": CAP}
    same = await _update(harness, t, amount=9_000, cancel_at_period_end=True)
    assert kind(same) == "subscription.updated", data(same)
    assert data(same)["object"]["cancel_at_period_end"] is True
    method = await harness.send(
        "payment_method.attach",
        t,
        {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "m2"},
    )
    assert kind(method) == "payment_method.attached", data(method)
    moved = await _update(harness, t, payment_method_id="m2", cancel_at_period_end=False)
    assert kind(moved) == "subscription.updated", data(moved)
    assert data(moved)["object"]["payment_method_id"] == "m2"
    # A new amount is held to the cap as it is now, lower or not than the one it has.
    higher = await _update(harness, t, amount=9_001)
    assert data(higher)["reason"] == "quota_exceeded", data(higher)
    lower = await _update(harness, t, amount=8_000)
    assert data(lower)["reason"] == "quota_exceeded", data(lower)
    assert kind(await _update(harness, t, amount=4_000)) == "subscription.updated"


async def test_the_subscriptions_tax_counts_toward_the_cap(harness: Harness) -> None:
    t = harness.add_tenant(limits={"max_payment_amount": {"USD": 2_000}})
    vat = {"display_name": "VAT", "percentage": "20", "inclusive": False, "country": "GB"}
    rate = await harness.send("tax_rate.create", t, {**vat, "tax_rate_id": "vat"})
    assert kind(rate) == "tax_rate.created", data(rate)
    await _customer(harness, t)
    made = await _subscribe(harness, t, "s1", 1_000, tax_rate_ids=["vat"])
    assert kind(made) == "subscription.created", data(made)
    # 1999 + 20% is 23.99 a period: over the cap, as a create of it is.
    over = await _update(harness, t, amount=1_999)
    assert data(over)["reason"] == "quota_exceeded", data(over)
    assert "23.99 USD" in data(over)["message"], data(over)
    # (Archived since, the rate still taxes its subscription's periods: still counted.)
    archived = await harness.send("tax_rate.archive", t, {"tax_rate_id": "vat"})
    assert kind(archived) == "tax_rate.archived", data(archived)
    again = await _update(harness, t, amount=1_999)
    assert data(again)["reason"] == "quota_exceeded", data(again)
    fits = await _update(harness, t, amount=1_666)  # 1666 + 333
    assert kind(fits) == "subscription.updated", data(fits)


async def test_a_currency_no_longer_listed_takes_no_new_amount(harness: Harness) -> None:
    t = harness.add_tenant()
    await _customer(harness, t)
    made = await _subscribe(harness, t, "s1", 500, currency="EUR")
    assert kind(made) == "subscription.created", data(made)
    harness.tenants[t] = {
        **harness.tenants[t],
        "limits": {**CAP, "only_listed_currencies": True},
    }
    out = await _update(harness, t, amount=600)
    assert data(out)["reason"] == "quota_exceeded" and data(out)["limit"] == "currencies"
    # Its cancel is still its own to schedule.
    assert kind(await _update(harness, t, cancel_at_period_end=True)) == "subscription.updated"


async def test_a_refusal_the_handler_makes_is_not_a_quota_one(harness: Harness) -> None:
    """Unknown or canceled, the subscription is refused as without limits (not_found,
    invalid_state), not "over quota"."""
    t = harness.add_tenant(limits=CAP)
    await _customer(harness, t)
    assert kind(await _subscribe(harness, t, "s1", 100)) == "subscription.created"
    unknown = await harness.send(
        "subscription.update", t, {"subscription_id": "s9", "amount": 9_000}
    )
    assert data(unknown)["reason"] == "not_found", data(unknown)
    await harness.send("subscription.cancel", t, {"subscription_id": "s1"})
    canceled = await _update(harness, t, amount=9_000)
    assert data(canceled)["reason"] == "invalid_state", data(canceled)
