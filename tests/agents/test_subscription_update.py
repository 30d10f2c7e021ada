"""`subscription.update` through the pipeline, on the real simulator: a live
subscription's price, payment method and cancel at period end changed without canceling
it, with no prorations (the new amount billed from the next period on, a trial's first
invoice included), the state rules, the payment method's owner, the no-op, and
idempotency (replay, conflict, a crash's redelivery) as for every command."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from paystream.client import build_command
from paystream.gateways import base as gw
from paystream.money import Money
from paystream.streams.commands import COMMANDS, UpdateSubscription, validation_errors
from tests.agents.harness import Harness, data, kind, simulator_of

pytestmark = pytest.mark.asyncio
DAY = 24 * 3600
MONTHLY = {"amount": 1500, "currency": "EUR", "interval": "month"}


async def _attach(h: Harness, t: str, customer: str, pm: str, token: str = "pm_card_visa") -> None:
    out = await h.send(
        "payment_method.attach",
        t,
        {"customer_id": customer, "token": token, "payment_method_id": pm},
    )
    assert kind(out) == "payment_method.attached", data(out)


async def _subscribed(h: Harness, t: str, **kw: Any) -> dict[str, Any]:
    """Customer c1 with card m1, subscribed as s1 (monthly EUR 15.00, unless ``kw``)."""
    assert kind(await h.send("customer.create", t, {"customer_id": "c1"})) == "customer.created"
    await _attach(h, t, "c1", "m1")
    body = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1", **MONTHLY}
    out = await h.send("subscription.create", t, {**body, **kw})
    assert kind(out) == "subscription.created", data(out)
    return dict(data(out)["object"])


async def _update(h: Harness, t: str, **body: Any) -> Any:
    return await h.send("subscription.update", t, {"subscription_id": "s1", **body})


async def _effects(h: Harness, t: str, effect: str) -> list[Any]:
    return [e for e in await simulator_of(h, t).effects() if e.kind == effect]


async def _bill_a_card_set_outside(h: Harness, t: str, made: dict[str, Any]) -> None:
    """A card attached to c1 and made the subscription's at the simulator directly, as
    in a provider's dashboard (paystream records neither)."""
    sim = simulator_of(h, t)
    customer = h.tables.customers[f"{t}:c1"]["provider_customer_id"]
    outside = await sim.attach_payment_method(
        gw.AttachPaymentMethod(provider_customer_id=customer, token="pm_card_mastercard"),
        idempotency_key=f"outside-{t}",
    )
    await sim.update_subscription(
        gw.UpdateSubscription(
            provider_subscription_id=made["provider_subscription_id"],
            provider_payment_method_id=outside.provider_payment_method_id,
        ),
        idempotency_key=f"outside-{t}-update",
    )


def _invoices(outcome: Any) -> list[dict[str, Any]]:
    return [r["object"] for r in data(outcome).get("related", []) if r["entity_type"] == "invoice"]


async def _renewed(h: Harness, t: str, days: int = 32) -> Any:
    await simulator_of(h, t).advance_clock(days * DAY)
    out = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert kind(out) == "subscription.updated", data(out)
    return out


async def test_the_command_is_registered_and_needs_something_to_change(harness: Harness) -> None:
    assert "subscription.update" in COMMANDS
    t = harness.add_tenant()
    for bad in (
        {},  # nothing to change
        {"amount": None, "payment_method_id": None, "cancel_at_period_end": None},
        {"amount": 0},
        {"amount": 12.5},
        {"amount": "1200"},
        {"cancel_at_period_end": "no"},
        {"currency": "USD", "amount": 100},  # no currency change
        {"interval": "year"},  # nor interval change
    ):
        out = await _update(harness, t, **bad)
        assert data(out)["reason"] == "validation_error", (bad, data(out))
    out = await harness.send("subscription.update", t, {"amount": 100})
    assert data(out)["reason"] == "validation_error"  # subscription_id is required


@pytest.mark.parametrize(
    "body,errors",
    [
        # What never changes is refused by name, saying what to do instead, not as any
        # unknown field ("Extra inputs are not permitted"; review h77o F1).
        (
            {"currency": "USD", "amount": 100},
            [("currency", "fixed_field", "cannot change: cancel and create a new subscription")],
        ),
        (
            {"interval": "year", "interval_count": 1, "unknown": 1},
            [
                ("interval", "fixed_field", "cannot change: cancel and create a new subscription"),
                (
                    "interval_count",
                    "fixed_field",
                    "cannot change: cancel and create a new subscription",
                ),
            ],
        ),
        # No pydantic "Value error, " before it (review h77o F2).
        (
            {},
            [
                (
                    "",
                    "value_error",
                    "nothing to change: give amount, payment_method_id, cancel_at_period_end "
                    "or trial_end",
                )
            ],
        ),
        (
            {"unknown": 1, "amount": 5},
            [("unknown", "extra_forbidden", "Extra inputs are not permitted")],
        ),
    ],
)
async def test_a_refusal_says_what_to_do(
    harness: Harness, body: dict[str, Any], errors: list[tuple[str, str, str]]
) -> None:
    """As the CLI checks it (`paystream send` prints each error's loc and msg) and as the
    pipeline answers it."""
    full = {"subscription_id": "s1", **body}
    with pytest.raises(pydantic.ValidationError) as exc:
        UpdateSubscription.model_validate(full)
    out = await _update(harness, harness.add_tenant(), **body)
    assert data(out)["reason"] == "validation_error", data(out)
    for said in (validation_errors(exc.value), data(out)["errors"]):
        assert [(e["loc"], e["type"], e["msg"]) for e in said] == errors, said


async def test_a_new_amount_is_billed_from_the_next_period_on(harness: Harness) -> None:
    t = harness.add_tenant()
    made = await _subscribed(harness, t)
    out = await _update(harness, t, amount=2500)
    assert kind(out) == "subscription.updated", data(out)
    sub = data(out)["object"]
    assert (sub["amount"], sub["currency"], sub["status"]) == (2500, "EUR", "active")
    assert data(out)["previous_status"] == "active"
    # No prorations: nothing charged or credited now, the period under way unchanged.
    assert sub["current_period_end"] == made["current_period_end"]
    assert _invoices(out) == []
    assert [c.amount for c in await _effects(harness, t, "charge")] == [1500]
    assert harness.tables.subscriptions[f"{t}:s1"]["amount"] == 2500
    renewed = await _renewed(harness, t)
    assert [(i["status"], i["amount"]) for i in _invoices(renewed)] == [("paid", 2500)]
    assert [c.amount for c in await _effects(harness, t, "charge")] == [1500, 2500]


async def test_in_a_trial_the_first_invoice_is_at_the_new_amount(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t, trial_days=14)
    out = await _update(harness, t, amount=900)
    assert kind(out) == "subscription.updated", data(out)
    assert data(out)["object"]["status"] == "trialing" and data(out)["object"]["amount"] == 900
    assert await _effects(harness, t, "charge") == []
    renewed = await _renewed(harness, t, days=15)
    assert [(i["status"], i["amount"]) for i in _invoices(renewed)] == [("paid", 900)]


async def test_periods_begun_before_the_change_are_billed_as_they_were(harness: Harness) -> None:
    """Renewals the provider's clock made due before the update are billed at the old
    amount (returned in `related`), the later ones at the new."""
    t = harness.add_tenant()
    await _subscribed(harness, t, interval="day", amount=700)
    await simulator_of(harness, t).advance_clock(DAY + 60)
    out = await _update(harness, t, amount=800)
    assert [(i["status"], i["amount"]) for i in _invoices(out)] == [("paid", 700)]
    renewed = await _renewed(harness, t, days=1)
    assert [i["amount"] for i in _invoices(renewed)] == [800]
    assert [c.amount for c in await _effects(harness, t, "charge")] == [700, 700, 800]


async def test_another_payment_method_is_billed_from_now_on(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t)
    # A card that saves but declines every charge: the renewal's decline shows it is the
    # one billed.
    await _attach(harness, t, "c1", "m2", token="pm_card_chargeCustomerFail")
    out = await _update(harness, t, payment_method_id="m2")
    assert kind(out) == "subscription.updated", data(out)
    assert data(out)["object"]["payment_method_id"] == "m2"
    assert harness.tables.subscriptions[f"{t}:s1"]["payment_method_id"] == "m2"
    late = await _renewed(harness, t)
    assert data(late)["object"]["status"] == "past_due"
    assert [i["status"] for i in _invoices(late)] == ["open"]
    # Back to the good card (a past_due subscription may be updated): the next period paid.
    back = await _update(harness, t, payment_method_id="m1")
    assert kind(back) == "subscription.updated", data(back)
    assert data(back)["object"]["payment_method_id"] == "m1"
    paid = await _renewed(harness, t)
    assert "paid" in [i["status"] for i in _invoices(paid)]


async def test_a_payment_method_not_the_customers_is_not_found(harness: Harness) -> None:
    t = harness.add_tenant()
    other = harness.add_tenant()
    await _subscribed(harness, t)
    # Another customer's of the same tenant, and another tenant's (same ids there).
    await harness.send("customer.create", t, {"customer_id": "c2"})
    await _attach(harness, t, "c2", "m3")
    await harness.send("customer.create", other, {"customer_id": "c1"})
    await _attach(harness, other, "c1", "m9")
    unknown = await _update(harness, t, payment_method_id="m9")  # (m9 is the other tenant's)
    assert kind(unknown) == "command.rejected"
    assert data(unknown)["reason"] == "not_found", data(unknown)
    never = await _update(harness, t, payment_method_id="m404")
    # Whose methods were looked in (review h77o F5), the same words for each of the three.
    assert data(never)["message"] == "no such payment method of customer c1: m404", data(never)
    # Another tenant's looks exactly as an unknown id does.
    assert data(unknown)["message"] == data(never)["message"].replace("m404", "m9")
    assert {k: v for k, v in data(unknown).items() if k != "message"} == {
        k: v for k, v in data(never).items() if k != "message"
    }
    customers = await _update(harness, t, payment_method_id="m3")
    assert data(customers)["reason"] == "not_found", data(customers)
    assert data(customers)["message"] == data(never)["message"].replace("m404", "m3")
    assert await _effects(harness, t, "subscription.updated") == []
    assert harness.tables.subscriptions[f"{t}:s1"]["payment_method_id"] == "m1"


async def test_a_detached_payment_method_is_invalid_state(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t)
    await _attach(harness, t, "c1", "m2")
    await harness.send("payment_method.detach", t, {"payment_method_id": "m2"})
    out = await _update(harness, t, payment_method_id="m2")
    assert data(out)["reason"] == "invalid_state", data(out)
    assert "detached" in data(out)["message"]
    assert await _effects(harness, t, "subscription.updated") == []


async def test_cancel_at_period_end_is_scheduled_and_resumed(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t, interval="day", interval_count=10)
    scheduled = await _update(harness, t, cancel_at_period_end=True)
    assert kind(scheduled) == "subscription.updated", data(scheduled)
    assert data(scheduled)["object"]["cancel_at_period_end"] is True
    resumed = await _update(harness, t, cancel_at_period_end=False)
    assert kind(resumed) == "subscription.updated", data(resumed)
    assert data(resumed)["object"]["cancel_at_period_end"] is False
    assert data(resumed)["object"]["status"] == "active"
    # Resumed: the period's end renews it rather than ending it.
    renewed = await _renewed(harness, t, days=11)
    assert data(renewed)["object"]["status"] == "active"
    assert [i["status"] for i in _invoices(renewed)] == ["paid"]
    assert len(await _effects(harness, t, "subscription.updated")) == 2


async def test_values_equal_to_the_current_ones_ask_nothing_of_the_provider(
    harness: Harness,
) -> None:
    """Equal values are not sent, but a payment method given is (the provider may bill
    one set outside paystream, which the record cannot name): the one call it makes
    changes nothing here."""
    t = harness.add_tenant()
    await _subscribed(harness, t)
    before = dict(harness.tables.subscriptions[f"{t}:s1"])
    out = await _update(harness, t, amount=1500, cancel_at_period_end=False)
    assert kind(out) == "subscription.updated", data(out)
    assert data(out)["previous_status"] == "active"
    obj = data(out)["object"]
    assert (obj["amount"], obj["payment_method_id"], obj["cancel_at_period_end"]) == (
        1500,
        "m1",
        False,
    )
    assert await _effects(harness, t, "subscription.updated") == []
    after = harness.tables.subscriptions[f"{t}:s1"]
    assert {k: after[k] for k in ("amount", "payment_method_id", "status")} == {
        k: before[k] for k in ("amount", "payment_method_id", "status")
    }
    # One field changing is sent; the equal ones beside it change nothing.
    changed = await _update(harness, t, amount=1500, cancel_at_period_end=True)
    assert data(changed)["object"]["cancel_at_period_end"] is True
    assert len(await _effects(harness, t, "subscription.updated")) == 1
    # The card recorded, given, is sent: billed as it was.
    same = await _update(harness, t, payment_method_id="m1")
    assert kind(same) == "subscription.updated", data(same)
    assert data(same)["object"]["payment_method_id"] == "m1"
    assert len(await _effects(harness, t, "subscription.updated")) == 2


async def test_only_a_live_subscription_is_updated(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t)
    await harness.send("subscription.cancel", t, {"subscription_id": "s1"})
    canceled = await _update(harness, t, amount=2000)
    assert data(canceled)["reason"] == "invalid_state", data(canceled)
    assert "canceled" in data(canceled)["message"]
    assert "active, trialing or past_due" in data(canceled)["message"]
    # An incomplete one (its first invoice declined).
    await _attach(harness, t, "c1", "m2", token="pm_card_chargeCustomerFail")
    failed = await harness.send(
        "subscription.create",
        t,
        {"subscription_id": "s2", "customer_id": "c1", "payment_method_id": "m2", **MONTHLY},
    )
    assert kind(failed) == "subscription.failed", data(failed)
    incomplete = await harness.send(
        "subscription.update", t, {"subscription_id": "s2", "cancel_at_period_end": True}
    )
    assert data(incomplete)["reason"] == "invalid_state", data(incomplete)
    assert "incomplete" in data(incomplete)["message"]
    # Even a value equal to the current one is refused: the state rules come first.
    same = await harness.send("subscription.update", t, {"subscription_id": "s2", "amount": 1500})
    assert data(same)["reason"] == "invalid_state", data(same)
    assert await _effects(harness, t, "subscription.updated") == []


async def test_another_tenants_subscription_is_not_found(harness: Harness) -> None:
    t = harness.add_tenant()
    other = harness.add_tenant()
    await _subscribed(harness, t)
    theirs = await _update(harness, other, amount=100)
    unknown = await harness.send("subscription.update", t, {"subscription_id": "s9", "amount": 1})
    assert data(theirs)["reason"] == "not_found", data(theirs)
    assert data(theirs)["message"] == data(unknown)["message"].replace("s9", "s1")
    assert harness.tables.subscriptions[f"{t}:s1"]["amount"] == 1500
    assert await _effects(harness, t, "subscription.updated") == []


async def test_a_provider_without_subscriptions_is_unsupported(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t)
    await _attach(harness, t, "c1", "m2")
    narrowed = {"capabilities": ["customers", "payment_methods", "payments"]}
    harness.tenants[t] = {**harness.tenants[t], "gateway_options": narrowed}
    # A new price or card bills more: the tenant's capability, as a create's.
    out = await _update(harness, t, amount=2000)
    assert data(out)["reason"] == "unsupported", data(out)
    card = await _update(harness, t, payment_method_id="m2", cancel_at_period_end=True)
    assert data(card)["reason"] == "unsupported", data(card)
    assert await _effects(harness, t, "subscription.updated") == []
    # A cancel at period end alone bills nothing new: scheduled and resumed as
    # subscription.cancel schedules it (review: refused `unsupported` before).
    scheduled = await _update(harness, t, cancel_at_period_end=True)
    assert kind(scheduled) == "subscription.updated", data(scheduled)
    assert data(scheduled)["object"]["cancel_at_period_end"] is True
    resumed = await _update(harness, t, amount=1500, cancel_at_period_end=False)
    assert kind(resumed) == "subscription.updated", data(resumed)
    assert data(resumed)["object"]["cancel_at_period_end"] is False
    assert len(await _effects(harness, t, "subscription.updated")) == 2
    # A cancel is still open to it.
    gone = await harness.send(
        "subscription.cancel", t, {"subscription_id": "s1", "at_period_end": True}
    )
    assert kind(gone) == "subscription.updated", data(gone)


async def test_replay_and_conflict(harness: Harness) -> None:
    t = harness.add_tenant()
    await _subscribed(harness, t)
    body = {"subscription_id": "s1", "amount": 2200}
    event = build_command("subscription.update", t, body, command_id="upd-1")
    await harness.assert_redelivered_alike(event)
    again = await harness.send("subscription.update", t, body, command_id="upd-1")
    assert kind(again) == "subscription.updated" and data(again)["object"]["amount"] == 2200
    other = await harness.send(
        "subscription.update", t, {**body, "amount": 999}, command_id="upd-1"
    )
    assert data(other)["reason"] == "idempotency_conflict", data(other)
    # Named as the sender gave it: the command id, no idempotency key (review h77o F4).
    assert data(other)["message"] == (
        "command id 'upd-1' was already used for a different request: send this one under a new id"
    ), data(other)
    # A key given is named as the key.
    keyed = {"subscription_id": "s1", "cancel_at_period_end": True}
    first = await harness.send("subscription.update", t, keyed, idempotency_key="K-upd")
    assert kind(first) == "subscription.updated", data(first)
    other = await harness.send("subscription.update", t, body, idempotency_key="K-upd")
    said = data(other)["message"]
    assert said == "idempotency key 'K-upd' was used for a different request", data(other)
    assert len(await _effects(harness, t, "subscription.updated")) == 2
    assert harness.tables.subscriptions[f"{t}:s1"]["amount"] == 2200


async def test_an_update_whose_writes_were_lost_is_applied_once(harness: Harness) -> None:
    """A crash after the provider applied the update, before the tables kept anything:
    redelivered, it asks again under the same key, answered from it, applied once."""
    t = harness.add_tenant()
    await _subscribed(harness, t)
    before = dict(harness.tables.subscriptions[f"{t}:s1"])
    event = build_command(
        "subscription.update", t, {"subscription_id": "s1", "amount": 3100}, command_id="upd-c"
    )
    _, first = await harness.send_event(event)
    harness.tables.subscriptions[f"{t}:s1"] = before
    for key in [k for k in harness.idempotency if k.startswith(f"{t}:")]:
        del harness.idempotency[key]
    _, second = await harness.send_event(event)
    assert first is not None and second is not None
    assert kind(second) == "subscription.updated", data(second)
    assert data(second)["object"]["amount"] == data(first)["object"]["amount"] == 3100
    assert len(await _effects(harness, t, "subscription.updated")) == 1


@pytest.mark.parametrize("stored", [True, False], ids=["stored-then-lost", "never-reached"])
async def test_a_parked_update_re_driven_after_a_newer_one_is_read_back(
    harness: Harness, stored: bool
) -> None:
    """Update u1 (a new amount) parked: the provider applied it and its answer was lost,
    or it never reached the provider. Update u2 since (a cancel at period end). Re-driven,
    u1 is not asked again under its key (the provider would answer as of then, without
    u2's cancel, and that answer would be written over it): the subscription is read
    back as the provider holds it and recorded, u1's amount in it only if the provider
    took u1 (nor is u1 applied late over u2). Not in effect, u1 is refused `invalid_state`
    naming its amount (review h77i: it was answered `subscription.updated`)."""
    from tests.agents.harness import new_tenant_id
    from tests.agents.test_let_through import _answer, _command

    h = harness
    t = new_tenant_id()
    failing = "lose_response_first" if stored else "fail_first"
    h.add_tenant(t, gateway_options={failing: {f"ps:{t}:u1": 3}})
    await _subscribed(h, t)
    u1 = {"subscription_id": "s1", "amount": 2500}
    emits = await h.processor.process(_command(t, "subscription.update", u1, "u1"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    u2 = {"subscription_id": "s1", "cancel_at_period_end": True}
    newer = await _answer(h, _command(t, "subscription.update", u2, "u2"))
    assert kind(newer) == "subscription.updated", data(newer)
    out = await _answer(h, _command(t, "subscription.update", u1, "u1"))  # `dlq replay`
    amount = 2500 if stored else 1500
    sub = h.tables.subscriptions[f"{t}:s1"]
    assert (sub["amount"], sub["cancel_at_period_end"]) == (amount, True), sub
    if stored:
        assert kind(out) == "subscription.updated", data(out)
        obj = data(out)["object"]
        assert (obj["amount"], obj["cancel_at_period_end"]) == (amount, True), obj
        assert data(out)["previous_status"] == "active"
    else:
        _refused_not_in_effect(out, "amount 2500 asked, 1500 in effect")
    # The provider holds the same: u1 applied once or never, u2's cancel kept.
    assert len(await _effects(h, t, "subscription.updated")) == (2 if stored else 1)
    at_provider = await simulator_of(h, t)._store.read(sub["provider_subscription_id"])
    assert at_provider is not None
    assert (at_provider["amount"], at_provider["cancel_at_period_end"]) == (amount, True)


def _refused_not_in_effect(out: Any, field: str) -> None:
    """A re-driven update whose fields the read-back does not show: `invalid_state`,
    naming ``field`` (asked, then in effect) and how to apply it."""
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == "invalid_state", data(out)
    message = data(out)["message"]
    assert "changed since this update was first tried" in message, message
    assert field in message and "with a new command id" in message, message


async def _park_then_newer(h: Harness, t: str, parked: dict[str, Any]) -> None:
    """Update u1 (``parked``) parked (the tenant's gateway options fail it: its answer
    lost after the provider applied it, or never reaching it); u2 (a cancel at period
    end) since."""
    from tests.agents.test_let_through import _answer, _command

    emits = await h.processor.process(_command(t, "subscription.update", parked, "u1"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    u2 = {"subscription_id": "s1", "cancel_at_period_end": True}
    newer = await _answer(h, _command(t, "subscription.update", u2, "u2"))
    assert kind(newer) == "subscription.updated", data(newer)


@pytest.mark.parametrize("stored", [True, False], ids=["stored-then-lost", "never-reached"])
async def test_a_parked_card_change_re_driven_is_read_back_with_its_card(
    harness: Harness, stored: bool
) -> None:
    """u1 moves s1 to card m2 and is parked; u2 since. Re-driven, u1 reads the
    subscription back: the card the provider bills is recorded (m2 if it took u1, m1 if
    not), in the table and the outcome (review: the read-back kept m1 while the provider
    billed m2, and an update back to m1 was then a no-op, never sent)."""
    from tests.agents.harness import new_tenant_id
    from tests.agents.test_let_through import _answer, _command

    h = harness
    t = new_tenant_id()
    failing = "lose_response_first" if stored else "fail_first"
    h.add_tenant(t, gateway_options={failing: {f"ps:{t}:u1": 3}})
    await _subscribed(h, t)
    await _attach(h, t, "c1", "m2", token="pm_card_mastercard")
    u1 = {"subscription_id": "s1", "payment_method_id": "m2"}
    await _park_then_newer(h, t, u1)
    out = await _answer(h, _command(t, "subscription.update", u1, "u1"))  # `dlq replay`
    card = "m2" if stored else "m1"
    sub = h.tables.subscriptions[f"{t}:s1"]
    assert (sub["payment_method_id"], sub["cancel_at_period_end"]) == (card, True), sub
    if stored:
        assert kind(out) == "subscription.updated", data(out)
        obj = data(out)["object"]
        assert (obj["payment_method_id"], obj["cancel_at_period_end"]) == (card, True), obj
    else:
        _refused_not_in_effect(out, "payment_method_id m2 asked, m1 in effect")
    # The provider bills the card recorded.
    at_provider = await simulator_of(h, t)._store.read(sub["provider_subscription_id"])
    assert at_provider is not None
    pm = h.tables.payment_methods[f"{t}:{card}"]
    assert at_provider["payment_method"] == pm["provider_payment_method_id"]


async def test_a_card_attached_outside_paystream_is_read_back_as_the_recorded_one(
    harness: Harness,
) -> None:
    """The provider bills a card paystream never recorded (attached and set in its
    dashboard): the read-back keeps the recorded card, counted and logged (u1, never
    applied, refused as not in effect)."""
    from paystream import metrics
    from tests.agents.harness import new_tenant_id
    from tests.agents.test_let_through import _answer, _command

    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"fail_first": {f"ps:{t}:u1": 3}})
    made = await _subscribed(h, t)
    u1 = {"subscription_id": "s1", "amount": 2500}
    await _park_then_newer(h, t, u1)
    await _bill_a_card_set_outside(h, t, made)
    unknown = metrics.SUBSCRIPTION_METHODS_UNKNOWN.labels("simulator", t)
    before = unknown._value.get()
    out = await _answer(h, _command(t, "subscription.update", u1, "u1"))
    _refused_not_in_effect(out, "amount 2500 asked, 1500 in effect")
    assert h.tables.subscriptions[f"{t}:s1"]["payment_method_id"] == "m1"
    assert unknown._value.get() == before + 1


@pytest.mark.parametrize("stored", [True, False], ids=["stored-then-lost", "never-reached"])
async def test_a_parked_update_re_driven_after_a_refresh_is_applied(
    harness: Harness, stored: bool
) -> None:
    """u1 (a new amount) parked; a plain `subscription.refresh` since (a Stripe webhook's,
    say), a read that changes nothing u1 sets. Re-driven, u1 is applied, whether it had
    reached the provider or not (review h81rx F1: the read counted as a change, and u1
    never sent was refused `invalid_state`). The table holds what the provider does."""
    from tests.agents.harness import new_tenant_id
    from tests.agents.test_let_through import _answer, _command

    h = harness
    t = new_tenant_id()
    failing = "lose_response_first" if stored else "fail_first"
    h.add_tenant(t, gateway_options={failing: {f"ps:{t}:u1": 3}})
    await _subscribed(h, t)
    u1 = {"subscription_id": "s1", "amount": 2500}
    emits = await h.processor.process(_command(t, "subscription.update", u1, "u1"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    refreshed = await _answer(
        h, _command(t, "subscription.refresh", {"subscription_id": "s1"}, "r1")
    )
    assert kind(refreshed) == "subscription.updated", data(refreshed)
    out = await _answer(h, _command(t, "subscription.update", u1, "u1"))  # `dlq replay`
    assert kind(out) == "subscription.updated", data(out)
    assert data(out)["object"]["amount"] == 2500
    sub = h.tables.subscriptions[f"{t}:s1"]
    at_provider = await simulator_of(h, t)._store.read(sub["provider_subscription_id"])
    assert at_provider is not None
    assert at_provider["amount"] == sub["amount"] == 2500, (at_provider, sub)


async def test_a_refresh_records_the_price_and_the_card_the_provider_bills(
    harness: Harness,
) -> None:
    """Price and card changed outside paystream (the provider's dashboard): a refresh
    (a Stripe webhook's) records the price, and the card when paystream knows it."""
    h = harness
    t = h.add_tenant()
    made = await _subscribed(h, t)
    await _attach(h, t, "c1", "m2", token="pm_card_mastercard")
    m2 = h.tables.payment_methods[f"{t}:m2"]["provider_payment_method_id"]
    await simulator_of(h, t).update_subscription(
        gw.UpdateSubscription(
            provider_subscription_id=made["provider_subscription_id"],
            amount=Money(amount=1900, currency="EUR"),
            provider_payment_method_id=m2,
        ),
        idempotency_key=f"outside-{t}-update",
    )
    refreshed = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert kind(refreshed) == "subscription.updated", data(refreshed)
    obj = data(refreshed)["object"]
    assert (obj["amount"], obj["payment_method_id"]) == (1900, "m2"), obj
    sub = h.tables.subscriptions[f"{t}:s1"]
    assert (sub["amount"], sub["payment_method_id"]) == (1900, "m2"), sub
    # The old price, asked again, is now a change: sent.
    back = await _update(h, t, amount=1500)
    assert data(back)["object"]["amount"] == 1500
    at_provider = await simulator_of(h, t)._store.read(made["provider_subscription_id"])
    assert at_provider is not None and at_provider["amount"] == 1500


async def test_a_card_set_outside_paystream_is_put_back_by_an_update_to_the_recorded_card(
    harness: Harness,
) -> None:
    """The provider bills a card set outside paystream, which it has not recorded: the
    refresh keeps m1 (counted, logged). The tenant's `subscription.update` to m1, the
    card recorded, reaches the provider and puts it back (review h77i: a no-op)."""
    from paystream import metrics

    h = harness
    t = h.add_tenant()
    made = await _subscribed(h, t)
    await _bill_a_card_set_outside(h, t, made)
    unknown = metrics.SUBSCRIPTION_METHODS_UNKNOWN.labels("simulator", t)
    before = unknown._value.get()
    refreshed = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert kind(refreshed) == "subscription.updated", data(refreshed)
    assert data(refreshed)["object"]["payment_method_id"] == "m1"
    assert unknown._value.get() == before + 1
    out = await _update(h, t, payment_method_id="m1")
    assert kind(out) == "subscription.updated", data(out)
    at_provider = await simulator_of(h, t)._store.read(made["provider_subscription_id"])
    assert at_provider is not None
    m1 = h.tables.payment_methods[f"{t}:m1"]["provider_payment_method_id"]
    assert at_provider["payment_method"] == m1, (
        f"the provider still bills {at_provider['payment_method']} (set outside), "
        f"not m1 ({m1}): the update to m1 was a no-op"
    )


async def test_a_re_driven_update_reading_back_a_declined_renewal_carries_the_decline(
    harness: Harness,
) -> None:
    """u1 (a new amount) applied, its answer lost (parked); u2 since moves s1 to a card
    that declines, and a renewal falls due. Re-driven, u1's read-back finds s1 newly
    `past_due`: its outcome carries the decline in `error`, as a refresh's does (review
    h77i F6: it had none)."""
    from tests.agents.harness import new_tenant_id
    from tests.agents.test_let_through import _answer, _command

    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:u1": 3}})
    await _subscribed(h, t)
    await _attach(h, t, "c1", "m2", token="pm_card_chargeCustomerFail")
    u1 = {"subscription_id": "s1", "amount": 2500}
    emits = await h.processor.process(_command(t, "subscription.update", u1, "u1"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    u2 = {"subscription_id": "s1", "payment_method_id": "m2"}
    assert kind(await _answer(h, _command(t, "subscription.update", u2, "u2"))) == (
        "subscription.updated"
    )
    await simulator_of(h, t).advance_clock(32 * DAY)
    out = await _answer(h, _command(t, "subscription.update", u1, "u1"))  # `dlq replay`
    assert kind(out) == "subscription.updated", data(out)
    assert data(out)["object"]["status"] == "past_due", data(out)
    assert data(out)["previous_status"] == "active"
    assert data(out).get("error") is not None, data(out)


async def test_a_renewal_due_exactly_at_the_change_is_billed_once_at_the_old_amount(
    harness: Harness,
) -> None:
    """The period starting exactly at the change is billed before it (old amount), once;
    the next at the new (review h77i)."""
    t = harness.add_tenant()
    await _subscribed(harness, t, interval="day", amount=700)
    await simulator_of(harness, t).advance_clock(DAY)  # exactly the first renewal's start
    out = await _update(harness, t, amount=800)
    assert kind(out) == "subscription.updated", data(out)
    assert [i["amount"] for i in _invoices(out)] == [700]
    again = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert _invoices(again) == []
    renewed = await _renewed(harness, t, days=1)
    assert [i["amount"] for i in _invoices(renewed)] == [800]
    assert [c.amount for c in await _effects(harness, t, "charge")] == [700, 700, 800]


async def test_a_past_due_subscription_moved_to_a_good_card_is_active_once_a_renewal_is_paid(
    harness: Harness,
) -> None:
    """A card change on a past_due subscription charges nothing now (its open invoice is
    not retried, as Stripe's update does not); the next renewal is paid on the new card,
    and the subscription is active again, its older invoice still open (review h77i F5:
    the simulator kept it past_due while any invoice was open; Stripe's status follows
    the latest finalized invoice)."""
    t = harness.add_tenant()
    await _subscribed(harness, t)
    await _attach(harness, t, "c1", "m2", token="pm_card_chargeCustomerFail")
    await _update(harness, t, payment_method_id="m2")
    late = await _renewed(harness, t)
    assert data(late)["object"]["status"] == "past_due"
    back = await _update(harness, t, payment_method_id="m1")
    assert _invoices(back) == []
    assert data(back)["object"]["status"] == "past_due"
    assert [c.amount for c in await _effects(harness, t, "charge")] == [1500]
    paid = await _renewed(harness, t)
    assert data(paid)["object"]["status"] == "active", data(paid)
    assert [(i["status"], i["amount"]) for i in _invoices(paid)] == [("paid", 1500)]
    assert [c.amount for c in await _effects(harness, t, "charge")] == [1500, 1500]


async def test_a_new_amount_on_a_subscription_scheduled_to_cancel_bills_nothing_more(
    harness: Harness,
) -> None:
    """The cancel at period end stays scheduled through an amount change (as Stripe's
    does), and the period's end cancels it: nothing at the new amount is ever billed
    (review h77i)."""
    t = harness.add_tenant()
    await _subscribed(harness, t)
    await harness.send("subscription.cancel", t, {"subscription_id": "s1", "at_period_end": True})
    out = await _update(harness, t, amount=4000)
    assert kind(out) == "subscription.updated", data(out)
    assert data(out)["object"]["cancel_at_period_end"] is True
    await simulator_of(harness, t).advance_clock(32 * DAY)
    ended = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert kind(ended) == "subscription.canceled", data(ended)
    assert [c.amount for c in await _effects(harness, t, "charge")] == [1500]
