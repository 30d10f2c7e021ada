"""A taxed subscription is held to its tenant's money limits by what it charges: its
``amount`` plus the exclusive tax of its ``tax_rate_ids``, read at admission from the
tenant's tax rate table (review h74h: the pre-tax amount let a 19.99 + 20% subscription,
charging 23.99 a period, under a 20.00 cap; the daily volume undercounted it alike). An
inclusive rate charges nothing on top; an unknown or archived rate is refused by the
handler as before (the limits admit it at its untaxed amount)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.agents.harness import Harness, data, kind
from tests.agents.test_subscriptions import _charges, _customer

pytestmark = pytest.mark.asyncio
VAT = {"display_name": "VAT", "percentage": "20", "inclusive": False, "country": "GB"}
GBP_MONTHLY = {"customer_id": "c1", "payment_method_id": "m1", "currency": "GBP",
               "interval": "month"}  # fmt: skip


async def _rate(h: Harness, t: str, rid: str = "vat", **kw: Any) -> None:
    out = await h.send("tax_rate.create", t, {**VAT, "tax_rate_id": rid, **kw})
    assert kind(out) == "tax_rate.created", data(out)


async def _subscribe(h: Harness, t: str, sid: str, amount: int, **kw: Any) -> Any:
    body = {**GBP_MONTHLY, "subscription_id": sid, "amount": amount, **kw}
    return await h.send("subscription.create", t, body)


async def test_a_taxed_subscription_over_the_per_payment_cap_is_refused(
    harness: Harness,
) -> None:
    t = harness.add_tenant(limits={"max_payment_amount": {"GBP": 2_000}})
    await _rate(harness, t)
    await _customer(harness, t)
    out = await _subscribe(harness, t, "s1", 1_999, tax_rate_ids=["vat"])
    # 1999 + 20% is 2399 a period: refused as a payment.create of 2399 is.
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == "quota_exceeded", data(out)
    assert data(out)["limit"] == "max_payment_amount", data(out)
    assert "23.99 GBP" in data(out)["message"], data(out)
    assert await _charges(harness, t) == []
    # A trial charges nothing now, but each period would: refused the same.
    trial = await _subscribe(harness, t, "s2", 1_999, tax_rate_ids=["vat"], trial_days=7)
    assert data(trial)["reason"] == "quota_exceeded", data(trial)
    # Untaxed, the same amount is under the cap; taxed to exactly the cap, too.
    assert kind(await _subscribe(harness, t, "s3", 1_999)) == "subscription.created"
    fits = await _subscribe(harness, t, "s4", 1_667, tax_rate_ids=["vat"])  # 1667 + 333
    assert kind(fits) == "subscription.created", data(fits)


async def test_an_inclusive_rate_adds_nothing_to_the_charge(harness: Harness) -> None:
    t = harness.add_tenant(limits={"max_payment_amount": {"GBP": 2_000}})
    await _rate(harness, t, "vat-in", inclusive=True)
    await _customer(harness, t)
    out = await _subscribe(harness, t, "s1", 2_000, tax_rate_ids=["vat-in"])
    assert kind(out) == "subscription.created", data(out)
    assert [c.amount for c in await _charges(harness, t)] == [2_000]


async def test_a_taxed_subscription_counts_its_charge_in_the_daily_volume(
    harness: Harness,
) -> None:
    t = harness.add_tenant(limits={"daily_payment_volume": {"GBP": 2_200}})
    await _rate(harness, t)
    await _customer(harness, t)
    out = await _subscribe(harness, t, "s1", 1_999, tax_rate_ids=["vat"])
    assert data(out)["reason"] == "quota_exceeded", data(out)
    assert data(out)["limit"] == "daily_payment_volume", data(out)
    assert await _charges(harness, t) == []
    # One that fits is counted at its taxed charge: 1200 of 2200 used.
    made = await _subscribe(harness, t, "s2", 1_000, tax_rate_ids=["vat"])
    assert kind(made) == "subscription.created", data(made)
    over = await harness.send(
        "payment.create",
        t,
        {"amount": 1_001, "currency": "GBP", "payment_method_token": "pm_card_visa"},
    )
    assert data(over)["reason"] == "quota_exceeded", data(over)
    assert data(over)["used"] == 1_200, data(over)


@pytest.mark.parametrize("archived", [False, True])
async def test_an_unknown_or_archived_rate_keeps_the_handlers_refusal(
    harness: Harness, archived: bool
) -> None:
    t = harness.add_tenant(limits={"max_payment_amount": {"GBP": 2_000}})
    await _customer(harness, t)
    if archived:
        await _rate(harness, t)
        gone = await harness.send("tax_rate.archive", t, {"tax_rate_id": "vat"})
        assert kind(gone) == "tax_rate.archived", data(gone)
    out = await _subscribe(harness, t, "s1", 1_999, tax_rate_ids=["vat"])
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == ("invalid_state" if archived else "not_found"), data(out)
    assert await _charges(harness, t) == []
