"""Retention and a subscription's invoices (review h73u finding 1): a live subscription's
provider lists its newest 24 invoices at every read, so a paid invoice swept by entity
retention while its subscription lived came back at the next refresh as a NEW paid
invoice (its outcome naming it among the period's invoices, the analytics counting its
revenue a second time, the ledger a second version-1 event of it). An invoice now leaves
the tables only with its subscription: paid or void, and its subscription canceled and
unchanged as long (tables/retention.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from paystream.gateways.simulator import SimulatorGateway
from paystream.insights.observe import observe
from paystream.tables import retention
from paystream.tables.retention import expired, settled
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind
from tests.test_entity_retention import NOW, OLD, RETENTION, Table, entity, sweep

DAY = 24 * 3600


def _invoices(outcome: Any) -> list[dict[str, Any]]:
    return [r for r in data(outcome).get("related", []) if r["entity_type"] == "invoice"]


@pytest.mark.asyncio
async def test_a_live_subscriptions_paid_invoice_stays_and_is_not_recorded_again(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    await harness.send("customer.create", t, {"customer_id": "c1"})
    await harness.send(
        "payment_method.attach",
        t,
        {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "m1"},
    )
    out = await harness.send(
        "subscription.create",
        t,
        {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1",
         "amount": 1500, "currency": "EUR", "interval": "year"},
    )  # fmt: skip
    assert kind(out) == "subscription.created", data(out)
    [first] = _invoices(out)
    key = f"{t}:{first['entity_id']}"
    gateway = harness.pool.get(Tenant.model_validate(harness.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    await gateway.advance_clock(366 * DAY)  # the first renewal, read back
    renewal = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert len(_invoices(renewal)) == 1, data(renewal)
    await gateway.advance_clock(175 * DAY)  # day 541

    def subscription(sid: str) -> Any:
        return harness.tables.subscriptions.get(f"{t}:{sid}")

    # The sweep's judgment at day 541 (540 days' retention, the default): the first
    # year's paid invoice, unchanged since the create, stays while its subscription lives
    # (it was deleted here, and recorded again as new by the refresh below).
    later = time.time() + 541 * DAY
    assert not expired(harness.tables.invoices[key], later, RETENTION, subscription)
    renewed = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert kind(renewed) == "subscription.updated", data(renewed)
    seen = observe(renewed)
    assert seen is None or not seen.invoices_paid, seen  # nothing collected now
    assert first["entity_id"] not in [i["entity_id"] for i in _invoices(renewed)]
    # Canceled, and unchanged as long: the subscription and its invoices go together.
    canceled = await harness.send("subscription.cancel", t, {"subscription_id": "s1"})
    assert kind(canceled) == "subscription.canceled", data(canceled)
    sooner = time.time() + 539 * DAY  # (the worker's clock: canceled now)
    assert not expired(harness.tables.invoices[key], sooner, RETENTION, subscription)
    later = time.time() + 541 * DAY
    assert expired(harness.tables.invoices[key], later, RETENTION, subscription)
    assert expired(subscription("s1"), later, RETENTION)


def test_an_invoice_goes_only_with_its_settled_subscription() -> None:
    paid = entity("invoice", OLD, status="paid", subscription_id="s")
    void = entity("invoice", OLD, status="void", subscription_id="s")
    still_open = entity("invoice", OLD, status="open", subscription_id="s")
    live = entity("subscription", OLD, status="active")
    canceled_long_ago = entity("subscription", OLD, status="canceled")
    canceled_lately = entity("subscription", OLD, NOW - DAY, status="canceled")
    assert not settled(paid)  # never on its own
    for owner, gone in [
        (live, False),  # listed again at its next read
        (canceled_lately, False),
        (canceled_long_ago, True),
        (None, False),  # not found may be not readable here: kept
        (retention.UNREADABLE, False),
    ]:
        assert expired(paid, NOW, RETENTION, lambda sid, o=owner: o) is gone, owner
        assert expired(void, NOW, RETENTION, lambda sid, o=owner: o) is gone, owner
        # An open one may yet be paid (as before: kept).
        assert not expired(still_open, NOW, RETENTION, lambda sid, o=owner: o)
    assert not expired(paid, NOW, RETENTION)  # no subscription to ask: kept
    recent = entity("invoice", NOW - DAY, status="paid", subscription_id="s")
    assert not expired(recent, NOW, RETENTION, lambda sid: canceled_long_ago)


def test_the_sweep_takes_invoices_with_their_subscription_and_keeps_a_live_ones() -> None:
    subscriptions = Table(
        "subscriptions",
        {
            "t:live": (0, entity("subscription", OLD, status="active")),
            "t:gone": (0, entity("subscription", OLD, status="canceled")),
        },
    )
    invoices = Table(
        "invoices",
        {
            "t:i1": (0, entity("invoice", OLD, status="paid", subscription_id="live")),
            "t:i2": (0, entity("invoice", OLD, status="paid", subscription_id="gone")),
            "t:i3": (0, entity("invoice", OLD, status="void", subscription_id="gone")),
        },
    )
    # As the worker orders them: invoices first, judged while their subscription is there.
    assert sweep([invoices, subscriptions], actives={0}).step(NOW) == 3
    assert set(invoices) == {"t:i1"} and set(subscriptions) == {"t:live"}
