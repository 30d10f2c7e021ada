"""A subscription's life as the handlers emit it, read by the insights (observe): its
first invoice and each renewal paid once, a renewal's decline once, the subscription
created once and canceled once, however often it is read back."""

from __future__ import annotations

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.gateways.simulator import SimulatorGateway
from paystream.insights.observe import Observed, observe
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio
DAY = 24 * 3600
WEEKLY = {"amount": 700, "currency": "EUR", "interval": "week"}


def _gateway(h: Harness, tenant: str) -> SimulatorGateway:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


async def _customer(h: Harness, t: str, token: str = "pm_card_visa") -> None:
    await h.send("customer.create", t, {"customer_id": "c1"})
    saved = await h.send(
        "payment_method.attach", t, {"customer_id": "c1", "token": token, "payment_method_id": "m1"}
    )
    assert kind(saved) == "payment_method.attached", data(saved)


def _seen(outcomes: list[CloudEvent]) -> list[Observed]:
    seen = [observe(o) for o in outcomes]
    assert all(s is not None for s in seen)
    return [s for s in seen if s is not None]


async def test_renewals_are_paid_once_each_however_often_read(harness: Harness) -> None:
    """Created (its first week paid), three weeks on read back twice, canceled: four
    invoices paid, one subscription created and one canceled."""
    h = harness
    t = h.add_tenant()
    await _customer(h, t)
    body = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1", **WEEKLY}
    created = await h.send("subscription.create", t, body)
    assert kind(created) == "subscription.created", data(created)
    await _gateway(h, t).advance_clock(3 * 7 * DAY + 3600)
    read = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
    again = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
    gone = await h.send("subscription.cancel", t, {"subscription_id": "s1"})
    assert kind(gone) == "subscription.canceled", data(gone)
    seen = _seen([created, read, again, gone])
    assert [len(s.invoices_paid) for s in seen] == [1, 3, 0, 0]
    assert {p for s in seen for p in s.invoices_paid} == {("EUR", 700)}
    assert [s.subscription_created for s in seen] == [True, False, False, False]
    assert [s.subscription_canceled for s in seen] == [False, False, False, True]
    assert [s.attempt for s in seen] == [True, False, False, False]  # (the create only)
    assert all(s.invoices_declined == () for s in seen)


async def test_a_renewal_declined_counts_once_and_its_cancel_voids_nothing_more(
    harness: Harness,
) -> None:
    """A trial on a card that saves but never charges: created (nothing paid), its first
    renewal declined (past_due: one decline, named as payment.failed names it), read
    again (nothing more), canceled (its open invoice voided: counted nothing)."""
    h = harness
    t = h.add_tenant()
    await _customer(h, t, token="pm_card_chargeCustomerFail")
    body = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1",
            "trial_days": 7, **WEEKLY}  # fmt: skip
    created = await h.send("subscription.create", t, body)
    await _gateway(h, t).advance_clock(8 * DAY)
    late = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert data(late)["object"]["status"] == "past_due", data(late)
    again = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
    gone = await h.send("subscription.cancel", t, {"subscription_id": "s1"})
    seen = _seen([created, late, again, gone])
    assert [s.invoices_declined for s in seen] == [(), (("EUR", "generic_decline"),), (), ()]
    assert all(s.invoices_paid == () for s in seen)
    assert [s.subscription_created for s in seen] == [True, False, False, False]
    assert [s.subscription_canceled for s in seen] == [False, False, False, True]
    assert not any(s.attempt or s.card_declined for s in seen)  # (a trial; a renewal)


async def test_a_first_invoice_declined_is_a_decline_and_a_card_decline(harness: Harness) -> None:
    h = harness
    t = h.add_tenant()
    await _customer(h, t, token="pm_card_chargeCustomerFail")
    body = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1", **WEEKLY}
    failed = await h.send("subscription.create", t, body)
    assert kind(failed) == "subscription.failed", data(failed)
    gone = await h.send("subscription.cancel", t, {"subscription_id": "s1"})
    first, last = _seen([failed, gone])
    assert first.invoices_declined == (("EUR", "generic_decline"),)
    assert (first.attempt, first.card_declined, first.customer_id) == (True, True, "c1")
    assert not first.subscription_created
    assert not last.subscription_canceled  # (never live: no churn)
