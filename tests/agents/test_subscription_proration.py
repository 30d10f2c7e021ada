"""`subscription.update` with ``proration`` through the pipeline, on the real simulator:
a price change mid-period credited and charged as Stripe prorates it, on the next invoice
(``create_prorations``) or invoiced and charged now (``always_invoice``, once per key);
a downgrade a credit; a declined proration invoice leaves the update in effect and the
subscription past_due; nothing in a trial; refusals."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from paystream.client import build_command
from paystream.streams.commands import UpdateSubscription
from tests.agents.harness import Harness, data, kind, simulator_of
from tests.agents.test_subscription_update import (
    DAY,
    _attach,
    _effects,
    _invoices,
    _renewed,
    _subscribed,
    _update,
)

pytestmark = pytest.mark.asyncio


def _ts(value: Any) -> int:
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())


def _share(amount: int, start: int, end: int, at: int) -> int:
    """amount * (end - at) / (end - start), to the nearest unit, a half up (by hand)."""
    num, den = amount * (end - at), end - start
    return (2 * num + den) // (2 * den)


def _expected(sub: dict[str, Any], old: int, new: int, line: dict[str, Any]) -> list[int]:
    start, end = _ts(sub["current_period_start"]), _ts(sub["current_period_end"])
    at = _ts(line["period_start"])
    assert start < at < end and _ts(line["period_end"]) == end
    return [-_share(old, start, end, at), _share(new, start, end, at)]


async def test_create_prorations_puts_the_lines_on_the_next_invoice(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t)  # monthly EUR 15.00
    await simulator_of(harness, t).advance_clock(10 * DAY)
    out = await _update(harness, t, amount=2500, proration="create_prorations")
    assert kind(out) == "subscription.updated", data(out)
    sub = data(out)["object"]
    assert sub["amount"] == 2500 and sub["status"] == "active"
    pending = data(out)["pending_prorations"]
    assert [p["description"] for p in pending] == [
        "Unused time at the old price",
        "Remaining time at the new price",
    ]
    credit, charge = _expected(sub, 1500, 2500, pending[0])
    assert [p["amount"] for p in pending] == [credit, charge]
    assert -1500 < credit < -900 and 1500 < charge < 2500  # (about two thirds left)
    # Nothing charged now, no invoice made.
    assert _invoices(out) == []
    assert [c.amount for c in await _effects(harness, t, "charge")] == [1500]
    # The next invoice: the new price plus the net proration.
    renewed = await _renewed(harness, t, days=25)
    [inv] = _invoices(renewed)
    assert (inv["status"], inv["amount"]) == ("paid", 2500 + credit + charge)
    assert [x["amount"] for x in inv["proration_lines"]] == [credit, charge]
    assert data(renewed).get("pending_prorations") is None
    assert [c.amount for c in await _effects(harness, t, "charge")] == [
        1500,
        2500 + credit + charge,
    ]


async def test_always_invoice_charges_the_net_now_once(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t)
    await simulator_of(harness, t).advance_clock(10 * DAY)
    body = {"subscription_id": "s1", "amount": 2500, "proration": "always_invoice"}
    event = build_command("subscription.update", t, body, command_id="up-1")
    await harness.assert_redelivered_alike(event)  # (a crash's redelivery: alike)
    out = await harness.send("subscription.update", t, body, command_id="up-1")  # a replay
    assert kind(out) == "subscription.updated", data(out)
    sub = data(out)["object"]
    # (the replay answers as the first delivery did: the proration invoice in related)
    [inv] = _invoices(out)
    lines = inv["proration_lines"]
    credit, charge = _expected(sub, 1500, 2500, lines[0])
    assert [x["amount"] for x in lines] == [credit, charge]
    assert (inv["status"], inv["amount"]) == ("paid", credit + charge)
    # Charged once, under the update's key, whatever the deliveries.
    assert [c.amount for c in await _effects(harness, t, "charge")] == [1500, credit + charge]
    assert sub["status"] == "active" and sub["amount"] == 2500
    # The next period at the new price, nothing more prorated.
    renewed = await _renewed(harness, t, days=25)
    assert [(i["amount"], i.get("proration_lines")) for i in _invoices(renewed)] == [(2500, None)]


async def test_a_downgrade_is_a_credit_taken_off_the_next_invoices(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t, amount=9000)
    await simulator_of(harness, t).advance_clock(3 * DAY)
    out = await _update(harness, t, amount=1000, proration="always_invoice")
    assert kind(out) == "subscription.updated", data(out)
    sub = data(out)["object"]
    [inv] = [i for i in _invoices(out)]
    credit, charge = _expected(sub, 9000, 1000, inv["proration_lines"][0])
    net = credit + charge
    assert net < -1000  # more than the next period's price
    # Nothing charged: the invoice paid at zero, the credit kept for the next invoices.
    assert (inv["status"], inv["amount"]) == ("paid", 0)
    assert [c.amount for c in await _effects(harness, t, "charge")] == [9000]
    renewed = await _renewed(harness, t, days=29)
    [first] = _invoices(renewed)
    assert (first["status"], first["amount"]) == ("paid", 0)  # 1000 taken off the credit
    left = -net - 1000
    months = 0
    while left >= 1000:
        months += 1
        left -= 1000
        [inv] = _invoices(await _renewed(harness, t, days=31))
        assert inv["amount"] == 0
    [inv] = _invoices(await _renewed(harness, t, days=31))
    assert inv["amount"] == 1000 - left
    assert [c.amount for c in await _effects(harness, t, "charge")] == [9000, 1000 - left]


async def test_a_declined_proration_invoice_leaves_the_update_and_goes_past_due(
    harness: Harness,
) -> None:
    """Stripe's default payment_behavior for an update (allow_incomplete): the new price
    stands, the proration invoice stays open, the subscription past_due, and the outcome
    carries the decline."""
    t = harness.add_tenant()
    await _subscribed(harness, t)
    await _attach(harness, t, "c1", "m2", token="pm_card_chargeCustomerFail")
    await simulator_of(harness, t).advance_clock(5 * DAY)
    out = await _update(harness, t, amount=3000, payment_method_id="m2", proration="always_invoice")
    assert kind(out) == "subscription.updated", data(out)
    sub = data(out)["object"]
    assert (sub["status"], sub["amount"], sub["payment_method_id"]) == ("past_due", 3000, "m2")
    [inv] = _invoices(out)
    assert inv["status"] == "open" and inv["amount"] > 0 and inv["failure_code"]
    assert data(out).get("error") is not None, data(out)
    assert [c.amount for c in await _effects(harness, t, "charge")] == [1500]


async def test_in_a_trial_nothing_is_prorated(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t, trial_days=14)
    await simulator_of(harness, t).advance_clock(3 * DAY)
    for mode in ("create_prorations", "always_invoice"):
        out = await _update(harness, t, amount=900 if mode == "always_invoice" else 800,
                            proration=mode)  # fmt: skip
        assert kind(out) == "subscription.updated", data(out)
        assert data(out).get("pending_prorations") is None and _invoices(out) == []
    assert await _effects(harness, t, "charge") == []
    renewed = await _renewed(harness, t, days=12)
    assert [(i["amount"], i.get("proration_lines")) for i in _invoices(renewed)] == [(900, None)]


async def test_proration_needs_an_amount_and_is_one_of_three(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t)
    for bad in (
        {"cancel_at_period_end": True, "proration": "create_prorations"},
        {"payment_method_id": "m1", "proration": "always_invoice"},
        {"amount": 2000, "proration": "sometimes"},
        {"amount": 2000, "proration": True},
    ):
        out = await _update(harness, t, **bad)
        assert data(out)["reason"] == "validation_error", (bad, data(out))
    # "none" with no amount is what leaving it out means.
    out = await _update(harness, t, cancel_at_period_end=True, proration="none")
    assert kind(out) == "subscription.updated", data(out)


async def test_without_proration_the_request_hash_is_as_before() -> None:
    """An update sent before `proration` existed keeps its idempotency hash: the hash of
    its fields as they were (none named proration)."""
    import hashlib

    import orjson

    from paystream.agents.idempotency_keeping import request_hash

    fields = {
        "subscription_id": "s1",
        "amount": 2000,
        "payment_method_id": None,
        "cancel_at_period_end": None,
    }
    then = orjson.dumps(["subscription.update", fields], option=orjson.OPT_SORT_KEYS)
    before = UpdateSubscription.model_validate({"subscription_id": "s1", "amount": 2000})
    assert request_hash("subscription.update", before) == hashlib.sha256(then).hexdigest()
    assert request_hash("subscription.update", before.model_dump(mode="json")) == (
        hashlib.sha256(then).hexdigest()
    )
    prorated = before.model_copy(update={"proration": "create_prorations"})
    assert request_hash("subscription.update", prorated) != hashlib.sha256(then).hexdigest()


async def test_proration_none_spelled_out_hashes_as_left_out() -> None:
    """``none`` is the default: a client resending with it named is the same request,
    not an idempotency_conflict (review h79r_e L5)."""
    from paystream.agents.idempotency_keeping import request_hash

    left_out = UpdateSubscription.model_validate({"subscription_id": "s1", "amount": 2000})
    named = UpdateSubscription.model_validate(
        {"subscription_id": "s1", "amount": 2000, "proration": "none"}
    )
    assert named.proration is None
    assert request_hash("subscription.update", named) == request_hash(
        "subscription.update", left_out
    )
    assert request_hash("subscription.update", named.model_dump(mode="json")) == (
        request_hash("subscription.update", left_out)
    )


async def _pay(harness: Harness, t: str, amount: int) -> Any:
    return await harness.send(
        "payment.create",
        t,
        {"amount": amount, "currency": "EUR", "payment_method_token": "pm_card_visa"},
    )


async def test_always_invoice_is_held_to_the_tenant_limits_and_counts_what_it_charged(
    harness: Harness,
) -> None:
    """Its net is at most the new per-period charge: that is checked against the cap and
    held against the day's volume; what its invoice was paid is counted."""
    capped = harness.add_tenant(limits={"max_payment_amount": {"EUR": 2_000}})
    await _subscribed(harness, capped)
    out = await _update(harness, capped, amount=2_500, proration="always_invoice")
    assert data(out)["reason"] == "quota_exceeded", data(out)
    assert data(out)["limit"] == "max_payment_amount", data(out)

    t = harness.add_tenant(limits={"daily_payment_volume": {"EUR": 4_500}})
    await _subscribed(harness, t)  # 1500 used
    await simulator_of(harness, t).advance_clock(10 * DAY)
    # 1500 used + 3500 held (the new price: its most) is over 4500.
    over = await _update(harness, t, amount=3_500, proration="always_invoice")
    assert data(over)["reason"] == "quota_exceeded", data(over)
    assert (data(over)["limit"], data(over)["used"]) == ("daily_payment_volume", 1_500)
    assert [c.amount for c in await _effects(harness, t, "charge")] == [1_500]
    # Without proration it charges nothing now: not held to the day.
    out = await _update(harness, t, amount=1_800, proration="create_prorations")
    assert kind(out) == "subscription.updated", data(out)
    assert [c.amount for c in await _effects(harness, t, "charge")] == [1_500]
    out = await _update(harness, t, amount=2_500, proration="always_invoice")
    assert kind(out) == "subscription.updated", data(out)
    [inv] = _invoices(out)
    net = inv["amount"]
    assert inv["status"] == "paid" and 0 < net < 2_500
    # Counted at what it charged, not what it held.
    over = await _pay(harness, t, 4_500 - 1_500 - net + 1)
    assert data(over)["reason"] == "quota_exceeded", data(over)
    assert data(over)["used"] == 1_500 + net, data(over)
    fits = await _pay(harness, t, 4_500 - 1_500 - net)
    assert kind(fits) == "payment.succeeded", data(fits)


async def test_a_declined_or_credited_proration_counts_nothing(harness: Harness) -> None:
    t = harness.add_tenant(limits={"daily_payment_volume": {"EUR": 10_000}})
    await _subscribed(harness, t)  # 1500 used
    await _attach(harness, t, "c1", "m2", token="pm_card_chargeCustomerFail")
    await simulator_of(harness, t).advance_clock(5 * DAY)
    out = await _update(harness, t, amount=3_000, payment_method_id="m2",
                        proration="always_invoice")  # fmt: skip
    assert data(out)["object"]["status"] == "past_due", data(out)
    out = await _update(harness, t, amount=500, payment_method_id="m1",
                        proration="always_invoice")  # fmt: skip
    assert kind(out) == "subscription.updated", data(out)
    assert [(i["status"], i["amount"]) for i in _invoices(out)][-1] == ("paid", 0)
    over = await _pay(harness, t, 10_000 - 1_500 + 1)
    assert data(over)["used"] == 1_500, data(over)


async def test_the_simulators_fingerprint_of_an_update_without_proration_is_as_before() -> None:
    """A simulator key stored for an update before `proration` existed answers its
    replay (the same fingerprint), not an idempotency conflict."""
    from paystream.gateways import base as gw
    from paystream.gateways.simulator.store import model_fingerprint, request_fingerprint
    from paystream.money import Money

    req = gw.UpdateSubscription(
        provider_subscription_id="sub_1", amount=Money(amount=2000, currency="EUR")
    )
    then = req.model_dump(mode="json")
    del then["proration"], then["trial_end"]  # (neither existed then)
    assert model_fingerprint("update_subscription", req) == request_fingerprint(
        "update_subscription", then
    )
    prorated = req.model_copy(update={"proration": "always_invoice"})
    assert model_fingerprint("update_subscription", prorated) != request_fingerprint(
        "update_subscription", then
    )


async def test_a_charged_proration_invoice_is_counted_as_paid_once_by_the_insights(
    harness: Harness,
) -> None:
    """always_invoice's invoice, paid, counts as other paid invoices do (once, its
    amount); one paid at 0 (a credit) counts nothing, and a declined one counts as a
    decline. (A replay is the same outcome event again, which the insights count once by
    its id, as every outcome's.)"""
    from paystream.insights.observe import observe

    t = harness.add_tenant()
    await _subscribed(harness, t)
    await _attach(harness, t, "c1", "m2", token="pm_card_chargeCustomerFail")
    await simulator_of(harness, t).advance_clock(10 * DAY)
    body = {"subscription_id": "s1", "amount": 2500, "proration": "always_invoice"}
    up = await harness.send("subscription.update", t, body, command_id="u1")
    [inv] = _invoices(up)
    down = await _update(harness, t, amount=100, proration="always_invoice")
    declined = await _update(harness, t, amount=3000, payment_method_id="m2",
                             proration="always_invoice")  # fmt: skip
    seen = [observe(o) for o in (up, down, declined)]
    assert all(s is not None for s in seen)
    paid = [s.invoices_paid for s in seen if s is not None]
    assert paid == [(("EUR", inv["amount"]),), (), ()]
    assert [len(s.invoices_declined) for s in seen if s is not None] == [0, 0, 1]


async def test_always_invoice_sweeps_the_earlier_pending_prorations_onto_its_invoice(
    harness: Harness,
) -> None:
    """Stripe's invoice made by an update bills the subscription's pending invoice items
    (an invoice item "will be on the next invoice created for the customer"): an earlier
    ``create_prorations``'s lines are charged now with the ``always_invoice``'s, not left
    for the renewal (review h79r_e M1)."""
    t = harness.add_tenant()
    await _subscribed(harness, t)  # EUR 15.00 a month
    await simulator_of(harness, t).advance_clock(5 * DAY)
    first = await _update(harness, t, amount=2500, proration="create_prorations")
    pending = data(first)["pending_prorations"]
    assert len(pending) == 2, data(first)
    await simulator_of(harness, t).advance_clock(5 * DAY)
    out = await _update(harness, t, amount=3000, proration="always_invoice")
    assert kind(out) == "subscription.updated", data(out)
    [inv] = _invoices(out)
    lines = inv["proration_lines"]
    assert [x["amount"] for x in lines[:2]] == [p["amount"] for p in pending]
    mine = _expected(data(out)["object"], 2500, 3000, lines[2])
    assert [x["amount"] for x in lines[2:]] == mine
    assert (inv["status"], inv["amount"]) == ("paid", sum(x["amount"] for x in lines))
    assert data(out).get("pending_prorations") is None
    # The renewal bills the new price alone: nothing left pending.
    renewed = await _renewed(harness, t, days=25)
    assert [(i["amount"], i.get("proration_lines")) for i in _invoices(renewed)] == [(3000, None)]


async def test_a_renewal_an_always_invoice_bills_first_is_not_counted_as_its_charge(
    harness: Harness,
) -> None:
    """An update whose provider bills a period begun since the last read (a renewal
    carrying an earlier create_prorations's lines) records that renewal too; only its
    own proration invoice is what it charged for the day's volume: renewals are not
    counted (README, tenant limits), and the hold was its new price (review h79r_e M3)."""
    t = harness.add_tenant(limits={"daily_payment_volume": {"EUR": 100_000}})
    await _subscribed(harness, t)  # 1500 used
    await simulator_of(harness, t).advance_clock(10 * DAY)
    await _update(harness, t, amount=2500, proration="create_prorations")
    await simulator_of(harness, t).advance_clock(25 * DAY)  # renewed, not read back yet
    out = await _update(harness, t, amount=3000, proration="always_invoice")
    assert kind(out) == "subscription.updated", data(out)
    renewal, prorated = _invoices(out)
    assert renewal["proration_lines"] and renewal["amount"] > 2500, renewal
    assert prorated["status"] == "paid" and 0 < prorated["amount"] < 3000, prorated
    over = await _pay(harness, t, 100_000)
    assert data(over)["used"] == 1_500 + prorated["amount"], data(over)


async def test_a_proration_due_below_the_minimum_charge_is_carried_not_charged(
    harness: Harness,
) -> None:
    """Stripe: "If the amount due for the invoice is less than Stripe's minimum allowed
    charge per currency, the invoice is automatically marked paid, and we add the amount
    due to the customer's credit balance which is applied to the next invoice" (its
    Invoices reference). A small upgrade's always_invoice charges nothing now; the next
    invoice bills it (review h79r_e M4)."""
    t = harness.add_tenant()
    await _subscribed(harness, t)  # EUR 15.00 a month: EUR's minimum charge is 0.50
    await simulator_of(harness, t).advance_clock(10 * DAY)
    out = await _update(harness, t, amount=1510, proration="always_invoice")
    assert kind(out) == "subscription.updated", data(out)
    [inv] = _invoices(out)
    net = sum(x["amount"] for x in inv["proration_lines"])
    assert 0 < net < 50, inv
    assert (inv["status"], inv["amount"]) == ("paid", 0), inv
    assert [c.amount for c in await _effects(harness, t, "charge")] == [1500]
    renewed = await _renewed(harness, t, days=25)
    assert [i["amount"] for i in _invoices(renewed)] == [1510 + net]
    assert [c.amount for c in await _effects(harness, t, "charge")] == [1500, 1510 + net]


async def test_in_a_trial_always_invoice_holds_nothing(harness: Harness) -> None:
    """A trialing subscription's price change charges nothing now: it is not held
    against the day's volume (its price is still checked against the cap; review
    h79r_e L1)."""
    t = harness.add_tenant(limits={"daily_payment_volume": {"EUR": 2_000}})
    await _subscribed(harness, t, trial_days=14)  # nothing charged, nothing used
    out = await _update(harness, t, amount=3_000, proration="always_invoice")
    assert kind(out) == "subscription.updated", data(out)
    assert await _effects(harness, t, "charge") == []
    fits = await _pay(harness, t, 2_000)  # nothing was counted nor left held
    assert kind(fits) == "payment.succeeded", data(fits)

    capped = harness.add_tenant(limits={"max_payment_amount": {"EUR": 2_000}})
    await _subscribed(harness, capped, trial_days=14)
    over = await _update(harness, capped, amount=2_500, proration="always_invoice")
    assert data(over)["reason"] == "quota_exceeded", data(over)
    assert data(over)["limit"] == "max_payment_amount", data(over)


async def test_always_invoice_holds_the_prorations_still_pending_with_its_own(
    harness: Harness,
) -> None:
    """Its invoice bills the lines still pending from an earlier create_prorations: the
    day's volume holds them with the new charge, so that it cannot charge past the
    tenant's limit (review h79r_e M2). Once billed, they are no longer held."""
    t = harness.add_tenant(limits={"daily_payment_volume": {"EUR": 5_000}})
    await _subscribed(harness, t, amount=100)  # 100 used
    sim = simulator_of(harness, t)
    await sim.advance_clock(1 * DAY)
    up = await _update(harness, t, amount=8_000, proration="create_prorations")
    pending = sum(p["amount"] for p in data(up)["pending_prorations"])
    assert pending > 4_900, data(up)  # (most of a period at 80.00 less its 1.00's credit)
    assert harness.tables.subscriptions[f"{t}:s1"]["pending_proration_net"] == pending
    await sim.advance_clock(26 * DAY)
    # 100 used + 1000 (the new price) + the lines pending: over 5000. Without them held,
    # its invoice would charge them all now, past the day's limit.
    over = await _update(harness, t, amount=1_000, proration="always_invoice")
    assert data(over)["reason"] == "quota_exceeded", data(over)
    assert data(over)["limit"] == "daily_payment_volume", data(over)
    assert [c.amount for c in await _effects(harness, t, "charge")] == [100]

    # With room for them: charged once, and no longer held afterwards.
    roomy = harness.add_tenant(limits={"daily_payment_volume": {"EUR": 20_000}})
    await _subscribed(harness, roomy, amount=100)
    sim = simulator_of(harness, roomy)
    await sim.advance_clock(1 * DAY)
    await _update(harness, roomy, amount=8_000, proration="create_prorations")
    await sim.advance_clock(26 * DAY)
    out = await _update(harness, roomy, amount=1_000, proration="always_invoice")
    assert kind(out) == "subscription.updated", data(out)
    [inv] = _invoices(out)
    assert inv["status"] == "paid" and inv["amount"] > 4_000, inv
    assert "pending_proration_net" not in harness.tables.subscriptions[f"{roomy}:s1"]
    left = 20_000 - 100 - inv["amount"]
    fits = await _pay(harness, roomy, left)
    assert kind(fits) == "payment.succeeded", data(fits)
