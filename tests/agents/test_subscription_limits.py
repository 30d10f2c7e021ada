"""A tenant's money limits apply to subscription.create as to payment.create: the
per-period amount against ``max_payment_amount``, the first charge (none during a trial)
against ``daily_payment_volume``, held while unanswered and counted once answered, and
``only_listed_currencies``. Renewals are the provider's, never admitted here."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.client import build_command
from tests.agents.harness import Harness, data, kind
from tests.agents.test_subscriptions import _charges, _customer

pytestmark = pytest.mark.asyncio
USD_MONTHLY = {"customer_id": "c1", "payment_method_id": "m1", "currency": "USD",
               "interval": "month"}  # fmt: skip


async def _subscribe(h: Harness, t: str, sid: str, amount: int, **kw: Any) -> Any:
    body = {**USD_MONTHLY, "subscription_id": sid, "amount": amount, **kw}
    return await h.send("subscription.create", t, body)


async def _pay(h: Harness, t: str, amount: int, currency: str = "USD") -> Any:
    return await h.send(
        "payment.create",
        t,
        {"amount": amount, "currency": currency, "payment_method_token": "pm_card_visa"},
    )


async def test_a_period_over_the_per_payment_cap_is_refused(harness: Harness) -> None:
    t = harness.add_tenant(limits={"max_payment_amount": {"USD": 40_000}})
    await _customer(harness, t)
    big = await _subscribe(harness, t, "s1", 1_000_000)
    assert kind(big) == "command.rejected", data(big)
    assert data(big)["reason"] == "quota_exceeded", data(big)
    assert data(big)["limit"] == "max_payment_amount" and data(big)["allowed"] == 40_000
    # The message payment.create gets for the same amount.
    paid = await _pay(harness, t, 1_000_000)
    assert data(big)["message"] == data(paid)["message"]
    # A trial charges nothing now, but each period would: refused the same.
    trial = await _subscribe(harness, t, "s2", 1_000_000, trial_days=14)
    assert data(trial)["reason"] == "quota_exceeded", data(trial)
    assert await _charges(harness, t) == []
    assert f"{t}:s1" not in harness.tables.subscriptions
    ok = await _subscribe(harness, t, "s3", 40_000)
    assert kind(ok) == "subscription.created", data(ok)


async def test_the_first_charge_counts_toward_the_daily_volume(harness: Harness) -> None:
    t = harness.add_tenant(limits={"daily_payment_volume": {"USD": 1_000}})
    await _customer(harness, t)
    first = await _subscribe(harness, t, "s1", 600)
    assert kind(first) == "subscription.created", data(first)
    over = await _pay(harness, t, 500)
    assert data(over)["reason"] == "quota_exceeded", data(over)
    assert data(over)["limit"] == "daily_payment_volume" and data(over)["used"] == 600
    # A second subscription over what is left is refused as a payment would be.
    second = await _subscribe(harness, t, "s2", 500)
    assert data(second)["reason"] == "quota_exceeded", data(second)
    assert data(second)["limit"] == "daily_payment_volume", data(second)
    assert data(second)["message"] == data(over)["message"]
    assert len(await _charges(harness, t)) == 1
    assert kind(await _pay(harness, t, 400)) == "payment.succeeded"


async def test_a_trial_charges_nothing_today(harness: Harness) -> None:
    t = harness.add_tenant(
        limits={"daily_payment_volume": {"USD": 1_000}, "max_payment_amount": {"USD": 5_000}}
    )
    await _customer(harness, t)
    trial = await _subscribe(harness, t, "s1", 5_000, trial_days=7)
    assert kind(trial) == "subscription.created", data(trial)
    assert kind(await _pay(harness, t, 1_000)) == "payment.succeeded"


async def test_a_declined_first_invoice_counts_nothing(harness: Harness) -> None:
    t = harness.add_tenant(limits={"daily_payment_volume": {"USD": 1_000}})
    await _customer(harness, t, token="pm_card_chargeCustomerFail")
    failed = await _subscribe(harness, t, "s1", 900)
    assert kind(failed) == "subscription.failed", data(failed)
    assert kind(await _pay(harness, t, 1_000)) == "payment.succeeded"  # its hold released


async def test_only_listed_currencies(harness: Harness) -> None:
    t = harness.add_tenant(
        limits={"max_payment_amount": {"USD": 5_000}, "only_listed_currencies": True}
    )
    await _customer(harness, t)
    eur = await _subscribe(harness, t, "s1", 500, currency="EUR")
    assert data(eur)["reason"] == "quota_exceeded" and data(eur)["limit"] == "currencies"


async def test_a_redelivery_whose_limits_write_was_lost_counts_once(harness: Harness) -> None:
    t = harness.add_tenant(limits={"daily_payment_volume": {"USD": 1_000}})
    await _customer(harness, t)
    body = {**USD_MONTHLY, "subscription_id": "s1", "amount": 600}
    event = build_command("subscription.create", t, body, command_id="sub-lim")
    _, first = await harness.send_event(event, offset=7)
    assert first is not None and kind(first) == "subscription.created"
    harness.processor.limits.table.clear()  # a crash lost the limits state alone
    _, again = await harness.send_event(event, offset=7)
    assert again is not None and kind(again) == "subscription.created"
    over = await _pay(harness, t, 500)
    assert data(over)["reason"] == "quota_exceeded" and data(over)["used"] == 600, data(over)
    assert len(await _charges(harness, t)) == 1


async def test_a_create_over_an_existing_subscription_is_not_a_quota_refusal(
    harness: Harness,
) -> None:
    t = harness.add_tenant(limits={"daily_payment_volume": {"USD": 1_000}})
    await _customer(harness, t)
    assert kind(await _subscribe(harness, t, "s1", 900)) == "subscription.created"
    # The same id again (another command): answered as without limits (the id is
    # taken), not "over quota", which would say no subscription was made.
    again = await _subscribe(harness, t, "s1", 900)
    assert data(again)["reason"] == "invalid_state", data(again)


async def test_a_parked_create_holds_its_first_charge_until_answered(harness: Harness) -> None:
    """As a parked payment.create: what it may still charge is held against the day, and
    its re-drive (admitted before) is answered and counted once."""
    from paystream.tenancy.limits import LimitGate
    from tests.agents.harness import new_tenant_id
    from tests.agents.test_limits import T0, _record, _run

    t = new_tenant_id()
    harness.add_tenant(
        t,
        gateway_options={"fail_first": {f"pse:{t}:subscription:s1": 3}},
        limits={"daily_payment_volume": {"USD": 1_000}},
    )
    await _customer(harness, t)
    body = {**USD_MONTHLY, "subscription_id": "s1", "amount": 900}
    parked = await harness.processor.process(_record("subscription.create", t, body, "a", T0, 10))
    assert [e.topic for e in parked] == [harness.settings.retry_topic]
    pay = {"amount": 200, "currency": "USD", "payment_method_token": "pm_card_visa"}
    _, over = await _run(harness, _record("payment.create", t, pay, "b", T0 + 1, 11))
    assert data(over)["reason"] == "quota_exceeded"
    assert (data(over)["used"], data(over)["held"]) == (0, 900), data(over)
    # `dlq replay` re-drives it (a new record, the same command): answered, counted once.
    _, out = await _run(harness, _record("subscription.create", t, body, "a", T0 + 2, 12))
    assert kind(out) == "subscription.created", data(out)
    _, over = await _run(harness, _record("payment.create", t, pay, "c", T0 + 3, 13))
    assert (data(over)["used"], data(over)["held"]) == (900, 0), data(over)
    assert len(await _charges(harness, t)) == 1
    assert LimitGate.key(t) in harness.processor.limits.table
