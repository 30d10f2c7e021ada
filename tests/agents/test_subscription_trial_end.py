"""`subscription.update` `trial_end` on the real simulator: a trialing subscription's
trial ended now (its first period invoiced and charged at once, under the update's key:
paid, active; declined, past_due) or its end moved (earlier or later: the first period
billed at the new end), the state and time rules, the tenant limits (an end now held and
counted as a create's first charge), and exactly once (a redelivery, a parked update
re-driven: charged once)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from paystream.client import build_command
from paystream.streams.commands import UpdateSubscription
from paystream.tenancy.limits import LimitGate
from tests.agents.harness import Harness, data, kind, simulator_of
from tests.agents.test_subscription_update import (
    DAY,
    _attach,
    _effects,
    _invoices,
    _subscribed,
    _update,
)
from tests.insights.test_disputes_counted import _observe, _outcome

pytestmark = pytest.mark.asyncio


async def _charges(h: Harness, t: str) -> list[Any]:
    return await _effects(h, t, "charge")


def _at(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


async def _refresh(h: Harness, t: str) -> Any:
    out = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert kind(out) in ("subscription.updated", "subscription.canceled"), data(out)
    return out


async def test_the_model_takes_now_or_an_aware_time_and_keeps_the_hash_without_it() -> None:
    from paystream.agents.idempotency_keeping import request_hash

    assert UpdateSubscription(subscription_id="s1", trial_end="now").trial_end == "now"
    for given in (1_900_000_000, "1900000000", "2030-03-17T17:46:40Z", "2030-03-17T19:46:40+02:00"):
        made = UpdateSubscription.model_validate({"subscription_id": "s1", "trial_end": given})
        assert made.trial_end == 1_900_000_000, given
    for bad in ("Now", "NOW", "today", "2030-03-17T17:46:40", True, 0, -5, None):
        with pytest.raises(ValueError):
            UpdateSubscription.model_validate({"subscription_id": "s1", "trial_end": bad})
    with pytest.raises(ValueError, match="nothing is prorated in a trial"):
        UpdateSubscription(
            subscription_id="s1", amount=900, proration="always_invoice", trial_end="now"
        )
    # An update without it hashes as it did before the field (a fixed digest).
    plain = UpdateSubscription(subscription_id="s1", amount=5)
    assert request_hash("subscription.update", plain) == (
        "c1c5094a8f4a477ef892a7d08d46510cf4764b64816118f0d7ecd102d43e4e00"
    )


async def test_ending_the_trial_now_charges_the_first_period(harness: Harness) -> None:
    t = harness.add_tenant()
    made = await _subscribed(harness, t, trial_days=14)
    assert made["status"] == "trialing" and await _charges(harness, t) == []
    before = time.time()
    out = await _update(harness, t, trial_end="now")
    assert kind(out) == "subscription.updated", data(out)
    obj = data(out)["object"]
    assert (obj["status"], data(out)["previous_status"]) == ("active", "trialing"), data(out)
    ended = datetime.fromisoformat(obj["trial_end"]).timestamp()
    assert before - 1 <= ended <= time.time() + 1
    (invoice,) = _invoices(out)
    assert (invoice["status"], invoice["amount"]) == ("paid", 1500), invoice
    assert invoice["period_start"] == obj["trial_end"] == obj["current_period_start"]
    assert obj["latest_invoice_id"] == invoice["id"]
    assert [c.amount for c in await _charges(harness, t)] == [1500]
    # The analytics count its invoice paid, as any subscription invoice paid.
    said = {k: v for k, v in data(out).items() if k not in ("tenant_id", "command_id")}
    seen = _observe(_outcome("subscription.updated", data(out)["command_id"],
                             "subscription.update", said, tenant=t))  # fmt: skip
    assert seen.invoices_paid == (("EUR", 1500),), seen
    # The next period is billed a month on, not at the old trial's end.
    await simulator_of(harness, t).advance_clock(15 * DAY)
    assert _invoices(await _refresh(harness, t)) == []
    await simulator_of(harness, t).advance_clock(17 * DAY)
    assert [i["amount"] for i in _invoices(await _refresh(harness, t))] == [1500]
    # No longer trialing: a second end now is invalid_state, nothing asked.
    again = await _update(harness, t, trial_end="now")
    assert data(again)["reason"] == "invalid_state", data(again)
    assert "only a trialing subscription" in data(again)["message"]
    assert len(await _charges(harness, t)) == 2


async def test_a_new_amount_beside_it_is_the_first_invoices(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t, trial_days=14)
    out = await _update(harness, t, trial_end="now", amount=2100)
    assert kind(out) == "subscription.updated", data(out)
    assert [i["amount"] for i in _invoices(out)] == [2100]
    assert data(out)["object"]["amount"] == 2100


async def test_a_declined_first_invoice_leaves_it_past_due(harness: Harness) -> None:
    t = harness.add_tenant()
    assert kind(await harness.send("customer.create", t, {"customer_id": "c1"})) == (
        "customer.created"
    )
    await _attach(harness, t, "c1", "m1", token="pm_card_chargeCustomerFail")
    body = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1",
            "amount": 1500, "currency": "EUR", "interval": "month", "trial_days": 7}  # fmt: skip
    assert kind(await harness.send("subscription.create", t, body)) == "subscription.created"
    out = await _update(harness, t, trial_end="now")
    assert kind(out) == "subscription.updated", data(out)
    assert data(out)["object"]["status"] == "past_due", data(out)
    (invoice,) = _invoices(out)
    assert invoice["status"] == "open" and invoice["failure_code"], invoice
    assert data(out)["error"]["code"] == "card_declined", data(out)
    assert await _charges(harness, t) == []


async def test_moving_the_end_later_bills_the_first_period_then(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t, trial_days=14)
    later = int(time.time()) + 30 * DAY
    out = await _update(harness, t, trial_end=_at(later))
    assert kind(out) == "subscription.updated", data(out)
    obj = data(out)["object"]
    assert obj["status"] == "trialing" and _invoices(out) == []
    assert datetime.fromisoformat(obj["trial_end"]).timestamp() == later
    assert datetime.fromisoformat(obj["current_period_end"]).timestamp() == later
    sim = simulator_of(harness, t)
    await sim.advance_clock(15 * DAY)  # past the old end: still trialing, nothing billed
    assert data(await _refresh(harness, t))["object"]["status"] == "trialing"
    assert await _charges(harness, t) == []
    await sim.advance_clock(16 * DAY)  # past the new one: billed
    renewed = await _refresh(harness, t)
    assert data(renewed)["object"]["status"] == "active", data(renewed)
    (invoice,) = _invoices(renewed)
    assert datetime.fromisoformat(invoice["period_start"]).timestamp() == later
    assert [c.amount for c in await _charges(harness, t)] == [1500]


async def test_moving_the_end_earlier(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t, trial_days=30)
    sooner = int(time.time()) + 2 * DAY
    out = await _update(harness, t, trial_end=sooner)  # (unix seconds)
    assert kind(out) == "subscription.updated", data(out)
    assert datetime.fromisoformat(data(out)["object"]["trial_end"]).timestamp() == sooner
    await simulator_of(harness, t).advance_clock(3 * DAY)
    assert data(await _refresh(harness, t))["object"]["status"] == "active"
    assert [c.amount for c in await _charges(harness, t)] == [1500]


async def test_the_time_rules(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t, trial_days=14)
    now = int(time.time())
    for bad in (now - 60, now + 731 * DAY):
        out = await _update(harness, t, trial_end=bad)
        assert data(out)["reason"] == "validation_error", data(out)
        assert "at most 730 days from now" in data(out)["message"], data(out)
    for bad in ("Now", "2030-01-01T00:00:00"):  # misspelled, no offset
        out = await _update(harness, t, trial_end=bad)
        assert data(out)["reason"] == "validation_error", data(out)
    fits = await _update(harness, t, trial_end=now + 730 * DAY - 60)
    assert kind(fits) == "subscription.updated", data(fits)
    assert len(await _effects(harness, t, "subscription.updated")) == 1


async def test_the_time_is_judged_by_the_simulators_clock(harness: Harness) -> None:
    """A trial_end is judged by the provider's clock, the simulator's own once `paystream
    simulator advance` moved it, as a pause's resumes_at (handlers.provider_now): judged
    by the worker's, a trial_end past on the simulator's clock passed the handler (the
    simulator refused it), and one within 730 days of the simulator's clock but past
    the worker's 730 was refused before any call. Each bound, on both sides."""
    t = harness.add_tenant()
    await _subscribed(harness, t, trial_days=90)
    await simulator_of(harness, t).advance_clock(30 * DAY)  # (`paystream simulator advance`)
    now = int(time.time())  # (the worker's clock; the simulator's is 30 days ahead)
    sim_now = now + 30 * DAY
    # Ahead of the worker's clock, behind the simulator's: refused before any call.
    for bad in (now + 10 * DAY, sim_now - 120):
        out = await _update(harness, t, trial_end=_at(bad))
        assert data(out)["reason"] == "validation_error", data(out)
        assert "by the provider's clock" in data(out)["message"], data(out)
    # Past the simulator's 730 days (within the worker's 730 plus the advance): refused.
    out = await _update(harness, t, trial_end=sim_now + 730 * DAY + 120)
    assert data(out)["reason"] == "validation_error", data(out)
    assert "at most 730 days from now, by the provider's clock" in data(out)["message"]
    assert await _effects(harness, t, "subscription.updated") == []
    # Just ahead of the simulator's clock: taken, the trial ending then.
    soon = sim_now + 3600
    out = await _update(harness, t, trial_end=_at(soon))
    assert kind(out) == "subscription.updated", data(out)
    assert datetime.fromisoformat(data(out)["object"]["trial_end"]).timestamp() == soon
    # Past the worker's 730 days, within the simulator's: taken (the handler refused it).
    far = sim_now + 730 * DAY - 120
    assert far > now + 730 * DAY
    out = await _update(harness, t, trial_end=far)
    assert kind(out) == "subscription.updated", data(out)
    assert data(out)["object"]["status"] == "trialing", data(out)
    assert datetime.fromisoformat(data(out)["object"]["trial_end"]).timestamp() == far
    assert len(await _effects(harness, t, "subscription.updated")) == 2
    assert await _charges(harness, t) == []


async def test_only_a_trialing_subscription_takes_it(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t)  # active: no trial
    for given in ("now", int(time.time()) + DAY):
        out = await _update(harness, t, trial_end=given)
        assert data(out)["reason"] == "invalid_state", data(out)
        assert "only a trialing subscription's trial_end" in data(out)["message"]
    # One to be canceled at its trial's end is not ended now (resumed beside it, it is).
    other = harness.add_tenant()
    await _subscribed(harness, other, trial_days=14)
    assert kind(await _update(harness, other, cancel_at_period_end=True)) == (
        "subscription.updated"
    )
    out = await _update(harness, other, trial_end="now")
    assert data(out)["reason"] == "invalid_state", data(out)
    assert await _charges(harness, other) == []
    out = await _update(harness, other, trial_end="now", cancel_at_period_end=False)
    assert data(out)["object"]["status"] == "active", data(out)
    assert data(out)["object"]["cancel_at_period_end"] is False
    assert len(await _charges(harness, other)) == 1
    assert len(await _charges(harness, t)) == 1  # (its create's only)


async def test_a_redelivery_charges_once(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t, trial_days=14)
    event = build_command(
        "subscription.update", t, {"subscription_id": "s1", "trial_end": "now"}, command_id="e1"
    )
    await harness.assert_redelivered_alike(event)
    assert len(await _charges(harness, t)) == 1
    # A crash after the provider charged, before the tables kept anything: asked again
    # under the same key, answered from it.
    other = harness.add_tenant()
    await _subscribed(harness, other, trial_days=14)
    before = dict(harness.tables.subscriptions[f"{other}:s1"])
    event = build_command(
        "subscription.update", other, {"subscription_id": "s1", "trial_end": "now"},
        command_id="e2",
    )  # fmt: skip
    _, first = await harness.send_event(event)
    harness.tables.subscriptions[f"{other}:s1"] = before
    for key in [k for k in harness.idempotency if k.startswith(f"{other}:")]:
        del harness.idempotency[key]
    _, second = await harness.send_event(event)
    assert first is not None and second is not None
    assert kind(second) == "subscription.updated", data(second)
    assert data(second)["object"]["status"] == "active"
    assert len(await _charges(harness, other)) == 1


@pytest.mark.parametrize("stored", [True, False], ids=["stored-then-lost", "never-reached"])
async def test_a_parked_end_re_driven_charges_once(harness: Harness, stored: bool) -> None:
    from tests.agents.harness import new_tenant_id
    from tests.agents.test_let_through import _answer, _command

    h = harness
    t = new_tenant_id()
    failing = "lose_response_first" if stored else "fail_first"
    h.add_tenant(
        t,
        gateway_options={failing: {f"ps:{t}:e1": 3}},
        limits={"daily_payment_volume": {"EUR": 2_000}},
    )
    await _subscribed(h, t, trial_days=14)
    end = {"subscription_id": "s1", "trial_end": "now"}
    emits = await h.processor.process(_command(t, "subscription.update", end, "e1"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    assert len(await _charges(h, t)) == (1 if stored else 0)
    out = await _answer(h, _command(t, "subscription.update", end, "e1"))  # `dlq replay`
    assert kind(out) == "subscription.updated", data(out)
    assert data(out)["object"]["status"] == "active", data(out)
    assert len(await _charges(h, t)) == 1
    # Counted once toward the day: 1500 of 2000 used, nothing left held.
    pay = {"amount": 600, "currency": "EUR", "payment_method_token": "pm_card_visa"}
    over = await h.send("payment.create", t, pay)
    assert data(over)["reason"] == "quota_exceeded", data(over)
    assert (data(over)["used"], data(over)["held"]) == (1500, 0), data(over)
    assert LimitGate.key(t) in h.processor.limits.table


async def test_the_limits_hold_an_end_now_as_a_first_charge(harness: Harness) -> None:
    # Over the cap: refused before anything is asked, nothing charged.
    t = harness.add_tenant(limits={"max_payment_amount": {"EUR": 1_000}})
    sim_first = await _subscribed(harness, t, trial_days=14, amount=900)
    assert sim_first["status"] == "trialing"
    over = await _update(harness, t, trial_end="now", amount=1_200)
    assert kind(over) == "command.rejected", data(over)
    assert (data(over)["reason"], data(over)["limit"]) == ("quota_exceeded", "max_payment_amount")
    assert await _charges(harness, t) == []
    assert len(await _effects(harness, t, "subscription.updated")) == 0
    assert harness.tables.subscriptions[f"{t}:s1"]["status"] == "trialing"
    # Against the day's volume: held at its charge, counted at what it was paid.
    day = harness.add_tenant(limits={"daily_payment_volume": {"EUR": 2_000}})
    await _subscribed(harness, day, trial_days=14)
    paid = await harness.send(
        "payment.create",
        day,
        {"amount": 600, "currency": "EUR", "payment_method_token": "pm_card_visa"},
    )
    assert kind(paid) == "payment.succeeded", data(paid)
    refused = await _update(harness, day, trial_end="now")  # 600 + 1500 > 2000
    assert data(refused)["reason"] == "quota_exceeded", data(refused)
    assert (data(refused)["limit"], data(refused)["used"]) == ("daily_payment_volume", 600)
    assert len(await _charges(harness, day)) == 1  # (the payment's only)
    # Moving the end charges nothing now: nothing held, the day's room unchanged.
    moved = await _update(harness, day, trial_end=int(time.time()) + 3 * DAY)
    assert kind(moved) == "subscription.updated", data(moved)
    fits = await harness.send(
        "payment.create",
        day,
        {"amount": 1_400, "currency": "EUR", "payment_method_token": "pm_card_visa"},
    )
    assert kind(fits) == "payment.succeeded", data(fits)


async def test_an_end_now_counts_toward_the_day(harness: Harness) -> None:
    t = harness.add_tenant(limits={"daily_payment_volume": {"EUR": 2_000}})
    await _subscribed(harness, t, trial_days=14)
    out = await _update(harness, t, trial_end="now")
    assert data(out)["object"]["status"] == "active", data(out)
    pay = {"amount": 600, "currency": "EUR", "payment_method_token": "pm_card_visa"}
    over = await harness.send("payment.create", t, pay)
    assert data(over)["reason"] == "quota_exceeded", data(over)
    assert (data(over)["used"], data(over)["held"]) == (1500, 0), data(over)
    # A declined one counts nothing.
    declined = harness.add_tenant(limits={"daily_payment_volume": {"EUR": 2_000}})
    assert kind(await harness.send("customer.create", declined, {"customer_id": "c1"})) == (
        "customer.created"
    )
    await _attach(harness, declined, "c1", "m1", token="pm_card_chargeCustomerFail")
    body = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1",
            "amount": 1500, "currency": "EUR", "interval": "month", "trial_days": 7}  # fmt: skip
    assert kind(await harness.send("subscription.create", declined, body)) == (
        "subscription.created"
    )
    out = await _update(harness, declined, trial_end="now")
    assert data(out)["object"]["status"] == "past_due", data(out)
    fits = await harness.send("payment.create", declined, {**pay, "amount": 2_000})
    assert kind(fits) == "payment.succeeded", data(fits)


@pytest.mark.parametrize("stored", [True, False], ids=["stored-then-lost", "never-reached"])
async def test_a_parked_end_re_driven_after_a_newer_update_is_read_back(
    harness: Harness, stored: bool
) -> None:
    """An end now parked, then another update (a new price): re-driven, it is not sent
    again (it could undo the newer change), the subscription is read back: in effect if
    the trial is over (charged once), else refused naming it."""
    from tests.agents.harness import new_tenant_id
    from tests.agents.test_let_through import _answer, _command

    h = harness
    t = new_tenant_id()
    failing = "lose_response_first" if stored else "fail_first"
    h.add_tenant(t, gateway_options={failing: {f"ps:{t}:e1": 3}})
    await _subscribed(h, t, trial_days=14)
    end = {"subscription_id": "s1", "trial_end": "now"}
    emits = await h.processor.process(_command(t, "subscription.update", end, "e1"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    price = {"subscription_id": "s1", "amount": 1800}
    newer = await _answer(h, _command(t, "subscription.update", price, "u2"))
    assert kind(newer) == "subscription.updated", data(newer)
    out = await _answer(h, _command(t, "subscription.update", end, "e1"))  # `dlq replay`
    if stored:
        assert kind(out) == "subscription.updated", data(out)
        assert data(out)["object"]["status"] == "active"
        assert len(await _charges(h, t)) == 1
    else:
        assert data(out)["reason"] == "invalid_state", data(out)
        assert "trial_end now asked, still trialing" in data(out)["message"], data(out)
        assert h.tables.subscriptions[f"{t}:s1"]["status"] == "trialing"
        assert await _charges(h, t) == []


@pytest.mark.parametrize("between", ["refresh", "newer-update"])
async def test_a_parked_end_re_driven_after_its_invoice_was_read_is_counted_once(
    harness: Harness, between: str
) -> None:
    """Charged, its answer lost (parked); a refresh (a Stripe webhook's, say) or a newer
    update then reads its first invoice paid and records it: re-driven, the end is
    answered from its key (or read back), its outcome not listing the invoice (recorded
    already), and still counted toward the day, once (it was not: the 1,500 left
    uncounted, a later payment let past the cap)."""
    from tests.agents.harness import new_tenant_id
    from tests.agents.test_let_through import _answer, _command

    h = harness
    t = new_tenant_id()
    h.add_tenant(
        t,
        gateway_options={"lose_response_first": {f"ps:{t}:e1": 3}},
        limits={"daily_payment_volume": {"EUR": 2_000}},
    )
    await _subscribed(h, t, trial_days=14)
    end = {"subscription_id": "s1", "trial_end": "now"}
    emits = await h.processor.process(_command(t, "subscription.update", end, "e1"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    if between == "refresh":
        read = await _refresh(h, t)
    else:
        price = {"subscription_id": "s1", "amount": 1800}
        read = await _answer(h, _command(t, "subscription.update", price, "u2"))
    assert [i["status"] for i in _invoices(read)] == ["paid"], data(read)
    out = await _answer(h, _command(t, "subscription.update", end, "e1"))  # `dlq replay`
    assert kind(out) == "subscription.updated", data(out)
    assert data(out)["object"]["status"] == "active" and _invoices(out) == [], data(out)
    assert len(await _charges(h, t)) == 1
    pay = {"amount": 600, "currency": "EUR", "payment_method_token": "pm_card_visa"}
    over = await h.send("payment.create", t, pay)
    assert data(over).get("reason") == "quota_exceeded", data(over)
    assert (data(over)["used"], data(over)["held"]) == (1500, 0), data(over)


async def test_a_re_driven_end_replayed_after_a_crash_is_counted_once(harness: Harness) -> None:
    """As above (a refresh recorded the first invoice first), the re-drive then crashed
    after its entity write, its idempotency and limits writes lost: redelivered, it is
    answered from its entity (AlreadyApplied), its outcome listing no invoice, and still
    counted toward the day, once (the replay's settle had no command to tell an end now
    by, and counted 0; review h82rr M2)."""
    import copy

    from tests.agents.harness import new_tenant_id
    from tests.agents.test_let_through import _answer, _command

    h = harness
    t = new_tenant_id()
    h.add_tenant(
        t,
        gateway_options={"lose_response_first": {f"ps:{t}:e1": 3}},
        limits={"daily_payment_volume": {"EUR": 2_000}},
    )
    await _subscribed(h, t, trial_days=14)
    end = {"subscription_id": "s1", "trial_end": "now"}
    emits = await h.processor.process(_command(t, "subscription.update", end, "e1"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    assert [i["status"] for i in _invoices(await _refresh(h, t))] == ["paid"]
    kept = {k: copy.deepcopy(v) for k, v in h.idempotency.items() if k.startswith(f"{t}:")}
    limits = copy.deepcopy(h.processor.limits.table.get(LimitGate.key(t)))
    redrive = _command(t, "subscription.update", end, "e1")  # `dlq replay`
    first = await _answer(h, redrive)
    assert kind(first) == "subscription.updated", data(first)
    # The crash: the entity write kept, the idempotency and limits writes lost.
    for key in [k for k in h.idempotency if k.startswith(f"{t}:")]:
        del h.idempotency[key]
    for key, value in kept.items():
        h.idempotency[key] = value
    h.processor.limits.table[LimitGate.key(t)] = limits
    out = await _answer(h, redrive)  # (redelivered)
    assert kind(out) == "subscription.updated", data(out)
    assert data(out)["object"]["status"] == "active" and _invoices(out) == [], data(out)
    assert len(await _charges(h, t)) == 1
    pay = {"amount": 600, "currency": "EUR", "payment_method_token": "pm_card_visa"}
    over = await h.send("payment.create", t, pay)
    assert data(over).get("reason") == "quota_exceeded", data(over)
    assert (data(over)["used"], data(over)["held"]) == (1500, 0), data(over)
