"""Subscriptions (recurring billing) through the pipeline, on the real simulator: the
commands, their outcomes and rejections, renewals read back on the simulator's clock
(each period billed once however often read), declines, cancels, and exactly-once."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.simulator import SimulatorGateway
from paystream.streams.commands import COMMANDS, PROVIDER_READS
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio
DAY = 24 * 3600
MONTHLY = {"amount": 1500, "currency": "EUR", "interval": "month"}


def _gateway(h: Harness, tenant: str) -> SimulatorGateway:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


async def _customer(h: Harness, t: str, token: str = "pm_card_visa") -> None:
    made = await h.send("customer.create", t, {"customer_id": "c1"})
    assert kind(made) == "customer.created", data(made)
    saved = await h.send(
        "payment_method.attach", t, {"customer_id": "c1", "token": token, "payment_method_id": "m1"}
    )
    assert kind(saved) == "payment_method.attached", data(saved)


async def _subscribe(h: Harness, t: str, **kw: Any) -> Any:
    body = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1", **MONTHLY}
    return await h.send("subscription.create", t, {**body, **kw})


async def _charges(h: Harness, t: str) -> list[Any]:
    return [e for e in await _gateway(h, t).effects() if e.kind == "charge"]


def _invoices(outcome: Any) -> list[dict[str, Any]]:
    return [r for r in data(outcome).get("related", []) if r["entity_type"] == "invoice"]


async def test_the_commands_are_registered() -> None:
    assert {"subscription.create", "subscription.cancel", "subscription.refresh"} <= set(COMMANDS)
    assert "subscription.refresh" in PROVIDER_READS


async def test_create_charges_the_first_invoice(harness: Harness) -> None:
    t = harness.add_tenant()
    await _customer(harness, t)
    out = await _subscribe(harness, t)
    assert kind(out) == "subscription.created", data(out)
    sub = data(out)["object"]
    assert (sub["status"], sub["amount"], sub["currency"]) == ("active", 1500, "EUR")
    assert sub["interval"] == "month" and sub["interval_count"] == 1
    [invoice] = _invoices(out)
    assert invoice["object"]["status"] == "paid"
    assert invoice["object"]["amount"] == 1500 and invoice["object"]["subscription_id"] == "s1"
    assert invoice["entity_id"].startswith("in_")
    assert sub["latest_invoice_id"] == invoice["entity_id"]
    assert invoice["object"]["provider_payment_id"].startswith("pi_")
    assert [(c.amount, c.currency) for c in await _charges(harness, t)] == [(1500, "EUR")]
    # Its views: the entity tables hold both.
    assert harness.tables.subscriptions[f"{t}:s1"]["status"] == "active"
    assert harness.tables.invoices[f"{t}:{invoice['entity_id']}"]["status"] == "paid"


async def test_a_trial_charges_nothing_until_it_ends(harness: Harness) -> None:
    t = harness.add_tenant()
    await _customer(harness, t)
    out = await _subscribe(harness, t, trial_days=14)
    assert kind(out) == "subscription.created", data(out)
    assert data(out)["object"]["status"] == "trialing"
    assert data(out)["object"]["trial_end"] is not None
    assert _invoices(out) == [] and await _charges(harness, t) == []
    still = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert data(still)["object"]["status"] == "trialing" and _invoices(still) == []
    await _gateway(harness, t).advance_clock(15 * DAY)
    renewed = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert kind(renewed) == "subscription.updated", data(renewed)
    assert data(renewed)["previous_status"] == "trialing"
    assert data(renewed)["object"]["status"] == "active"
    assert [i["object"]["status"] for i in _invoices(renewed)] == ["paid"]
    assert len(await _charges(harness, t)) == 1


async def test_renewals_across_periods_are_billed_once_each(harness: Harness) -> None:
    t = harness.add_tenant()
    await _customer(harness, t)
    await _subscribe(harness, t, interval="week", amount=700)
    gateway = _gateway(harness, t)
    await gateway.advance_clock(3 * 7 * DAY + 3600)  # three more weeks begun
    first = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert [i["object"]["status"] for i in _invoices(first)] == ["paid"] * 3
    ids = [i["entity_id"] for i in _invoices(first)]
    assert data(first)["object"]["latest_invoice_id"] == ids[-1]
    for _ in range(3):  # read again and again: nothing more billed, nothing new recorded
        again = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
        assert _invoices(again) == []
    charges = await _charges(harness, t)
    assert len(charges) == 4 and len({c.idempotency_key for c in charges}) == 4
    assert sum(c.amount or 0 for c in charges) == 4 * 700
    starts = [i["object"]["period_start"] for i in _invoices(first)]
    assert starts == sorted(starts)


async def test_racing_reads_bill_each_period_once(harness: Harness) -> None:
    import asyncio

    from paystream.gateways.base import RetrieveSubscription

    t = harness.add_tenant()
    await _customer(harness, t)
    out = await _subscribe(harness, t, interval="day")
    gateway = _gateway(harness, t)
    await gateway.advance_clock(5 * DAY + 60)
    provider_id = data(out)["object"]["provider_subscription_id"]
    reads = await asyncio.gather(
        *(
            gateway.retrieve_subscription(
                RetrieveSubscription(provider_subscription_id=provider_id), idempotency_key=f"r{i}"
            )
            for i in range(6)
        )
    )
    assert {len(r.invoices) for r in reads} == {6}
    assert len(await _charges(harness, t)) == 6


async def test_a_renewal_declined_is_past_due(harness: Harness) -> None:
    t = harness.add_tenant()
    await _customer(harness, t, token="pm_card_chargeCustomerFail")  # saves, never charges
    out = await _subscribe(harness, t, trial_days=7)
    assert data(out)["object"]["status"] == "trialing"
    await _gateway(harness, t).advance_clock(8 * DAY)
    late = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert kind(late) == "subscription.updated", data(late)
    assert data(late)["object"]["status"] == "past_due"
    [invoice] = _invoices(late)
    assert invoice["object"]["status"] == "open"
    assert invoice["object"]["failure_code"] == "generic_decline"
    assert data(late)["error"]["decline_code"] == "generic_decline"
    assert await _charges(harness, t) == []
    # Canceled now, its open invoice is voided.
    gone = await harness.send("subscription.cancel", t, {"subscription_id": "s1"})
    assert kind(gone) == "subscription.canceled", data(gone)
    assert [i["object"]["status"] for i in _invoices(gone)] == ["void"]
    assert _invoices(gone)[0]["entity_id"] == invoice["entity_id"]


async def test_a_first_invoice_declined_fails_the_subscription(harness: Harness) -> None:
    t = harness.add_tenant()
    await _customer(harness, t, token="pm_card_chargeCustomerFail")
    out = await _subscribe(harness, t)
    assert kind(out) == "subscription.failed", data(out)
    assert data(out)["object"]["status"] == "incomplete"
    assert data(out)["error"]["decline_code"] == "generic_decline"
    assert data(out)["error"]["code"] == "card_declined"
    [invoice] = _invoices(out)
    assert invoice["object"]["status"] == "open"
    await _gateway(harness, t).advance_clock(40 * DAY)  # nothing more is billed
    read = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert data(read)["object"]["status"] == "incomplete" and _invoices(read) == []
    at_end = await harness.send(
        "subscription.cancel", t, {"subscription_id": "s1", "at_period_end": True}
    )
    assert data(at_end)["reason"] == "invalid_state", data(at_end)


async def test_cancel_now(harness: Harness) -> None:
    t = harness.add_tenant()
    await _customer(harness, t)
    await _subscribe(harness, t)
    gone = await harness.send("subscription.cancel", t, {"subscription_id": "s1"})
    assert kind(gone) == "subscription.canceled", data(gone)
    assert data(gone)["object"]["status"] == "canceled"
    assert data(gone)["object"]["canceled_at"] is not None
    assert data(gone)["previous_status"] == "active"
    # The paid first invoice stays paid; nothing more is billed.
    await _gateway(harness, t).advance_clock(90 * DAY)
    again = await harness.send("subscription.cancel", t, {"subscription_id": "s1"})
    assert kind(again) == "command.rejected"
    assert data(again)["reason"] == "invalid_state", data(again)
    # Read again, answered from its record (canceled is final), the provider not asked.
    read = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert kind(read) == "subscription.updated", data(read)
    assert (data(read)["previous_status"], data(read)["object"]["status"]) == (
        "canceled",
        "canceled",
    )
    assert "related" not in data(read)
    assert len(await _charges(harness, t)) == 1


async def test_cancel_at_period_end(harness: Harness) -> None:
    t = harness.add_tenant()
    await _customer(harness, t)
    await _subscribe(harness, t, interval="day", interval_count=10)
    later = await harness.send(
        "subscription.cancel", t, {"subscription_id": "s1", "at_period_end": True}
    )
    assert kind(later) == "subscription.updated", data(later)
    obj = data(later)["object"]
    assert obj["status"] == "active" and obj["cancel_at_period_end"] is True
    twice = await harness.send(
        "subscription.cancel", t, {"subscription_id": "s1", "at_period_end": True}
    )
    assert data(twice)["reason"] == "invalid_state"
    await _gateway(harness, t).advance_clock(5 * DAY)
    mid = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert data(mid)["object"]["status"] == "active"
    await _gateway(harness, t).advance_clock(6 * DAY)
    ended = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert kind(ended) == "subscription.canceled", data(ended)
    assert data(ended)["object"]["canceled_at"] == obj["current_period_end"]
    assert _invoices(ended) == []
    assert len(await _charges(harness, t)) == 1  # the period it ended at was not billed


async def test_rejections(harness: Harness) -> None:
    t = harness.add_tenant()
    other = harness.add_tenant()
    await _customer(harness, t)
    await _subscribe(harness, t)
    # Another tenant's subscription, customer and card are not found.
    for command, body in (
        ("subscription.cancel", {"subscription_id": "s1"}),
        ("subscription.refresh", {"subscription_id": "s1"}),
        ("subscription.create", {"customer_id": "c1", "payment_method_id": "m1", **MONTHLY}),
    ):
        refused = await harness.send(command, other, body)
        assert data(refused)["reason"] == "not_found", (command, data(refused))
    missing = await harness.send("subscription.refresh", t, {"subscription_id": "nope"})
    assert data(missing)["reason"] == "not_found"
    # Validation: a period over a year, a trial over 730 days, a float amount.
    for bad in (
        {"interval": "month", "interval_count": 13},
        {"interval": "week", "interval_count": 53},
        {"interval": "fortnight"},
        {"interval_count": 0},
        {"trial_days": 731},
        {"amount": 15.0},
        {"currency": "XXX"},
    ):
        refused = await _subscribe(harness, t, subscription_id="s2", **bad)
        assert data(refused)["reason"] == "validation_error", (bad, data(refused))
    # A card number where a field is: refused as everywhere, never echoed.
    carded = await _subscribe(harness, t, subscription_id="s3", metadata={"n": "4242424242424242"})
    assert data(carded)["reason"] == "card_data_forbidden"
    # An id taken.
    taken = await harness.send(
        "subscription.create",
        t,
        {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1", **MONTHLY},
    )
    assert data(taken)["reason"] == "invalid_state"
    # A detached card.
    await harness.send("payment_method.detach", t, {"payment_method_id": "m1"})
    detached = await _subscribe(harness, t, subscription_id="s4")
    assert data(detached)["reason"] == "invalid_state"


async def test_a_provider_without_subscriptions_is_unsupported(harness: Harness) -> None:
    t = harness.add_tenant(
        gateway_options={"capabilities": ["customers", "payment_methods", "payments"]}
    )
    await _customer(harness, t)
    out = await _subscribe(harness, t)
    assert kind(out) == "command.rejected"
    assert data(out)["reason"] == "unsupported", data(out)
    assert await _charges(harness, t) == []


async def test_replay_and_conflict(harness: Harness) -> None:
    from paystream.client import build_command

    t = harness.add_tenant()
    await _customer(harness, t)
    body = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1", **MONTHLY}
    event = build_command("subscription.create", t, body, command_id="sub-cmd-1")
    await harness.assert_redelivered_alike(event)
    again = await harness.send("subscription.create", t, body, command_id="sub-cmd-1")
    assert kind(again) == "subscription.created"
    assert len(await _charges(harness, t)) == 1
    other = await harness.send(
        "subscription.create", t, {**body, "amount": 999}, command_id="sub-cmd-1"
    )
    assert data(other)["reason"] == "idempotency_conflict", data(other)
    cancel = build_command("subscription.cancel", t, {"subscription_id": "s1"}, command_id="cx")
    await harness.assert_redelivered_alike(cancel)


async def test_a_create_whose_entity_writes_were_lost_charges_once(harness: Harness) -> None:
    """A crash after the provider charged, before the tables kept anything: the command
    redelivered asks again under the same key, answered from it, charged once."""
    from paystream.client import build_command

    t = harness.add_tenant()
    await _customer(harness, t)
    body = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1", **MONTHLY}
    event = build_command("subscription.create", t, body, command_id="sub-crash")
    _, first = await harness.send_event(event)

    def crash() -> None:  # lose every write of the command: entities and its decision
        for table in (harness.tables.subscriptions, harness.tables.invoices):
            for key in [k for k in table if k.startswith(f"{t}:")]:
                del table[key]
        for key in [k for k in harness.idempotency if k.startswith(f"{t}:")]:
            del harness.idempotency[key]

    crash()
    _, second = await harness.send_event(event)
    assert first is not None and second is not None
    assert kind(second) == "subscription.created"
    assert (
        data(second)["object"]["provider_subscription_id"]
        == (data(first)["object"]["provider_subscription_id"])
    )
    assert len(await _charges(harness, t)) == 1


async def test_an_invoice_write_alone_kept_answers_again(harness: Harness) -> None:
    """A crash kept a refresh's invoice write, not the subscription's: its redelivery
    answers with the outcome first emitted (the invoice remembers the command)."""
    from paystream.client import build_command

    t = harness.add_tenant()
    await _customer(harness, t)
    await _subscribe(harness, t, interval="day")
    await _gateway(harness, t).advance_clock(DAY + 60)
    before = dict(harness.tables.subscriptions[f"{t}:s1"])
    event = build_command("subscription.refresh", t, {"subscription_id": "s1"}, command_id="rf")

    def lose_the_subscription_write() -> None:
        harness.tables.subscriptions[f"{t}:s1"] = before
        for key in [k for k in harness.idempotency if k.startswith(f"{t}:")]:
            del harness.idempotency[key]

    await harness.assert_redelivered_alike(event, between=lose_the_subscription_write)
    assert len(await _charges(harness, t)) == 2
