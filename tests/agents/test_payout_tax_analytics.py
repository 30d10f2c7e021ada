"""Payouts and tax as the handlers emit them, read by the insights (observe): a payout
created once, paid once however often read back, failed once; a taxed payment's tax (its
share of a partial capture) and a taxed subscription's invoices' tax, each once."""

from __future__ import annotations

from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.insights.observe import Observed, observe
from tests.agents.harness import Harness, data, kind
from tests.agents.test_payouts import DAY, _gateway, _settled
from tests.agents.test_tax import _calc, _rate

pytestmark = pytest.mark.asyncio


def _seen(outcomes: list[CloudEvent]) -> list[Observed]:
    seen = [observe(o) for o in outcomes]
    assert all(s is not None for s in seen)
    return [s for s in seen if s is not None]


async def test_a_payout_s_life_is_counted_once_per_status(harness: Harness) -> None:
    """Created, read pending and in transit (nothing), paid (once: read again, nothing);
    another canceled; an instant one paid at its first read."""
    h = harness
    t = h.add_tenant()
    await _settled(h, t, 9000)
    made = await h.send("payout.create", t, {"payout_id": "po1", "amount": 3000, "currency": "EUR"})
    same = await h.send("payout.refresh", t, {"payout_id": "po1"})
    await _gateway(h, t).advance_clock(DAY)
    moving = await h.send("payout.refresh", t, {"payout_id": "po1"})
    await _gateway(h, t).advance_clock(DAY)
    paid = await h.send("payout.refresh", t, {"payout_id": "po1"})
    again = await h.send("payout.refresh", t, {"payout_id": "po1"})
    assert [kind(o) for o in (made, same, moving, paid, again)] == [
        "payout.created", "payout.updated", "payout.updated", "payout.paid", "payout.paid",
    ]  # fmt: skip
    other = await h.send("payout.create", t, {"payout_id": "po2", "amount": 500, "currency": "EUR"})
    gone = await h.send("payout.cancel", t, {"payout_id": "po2"})
    assert kind(gone) == "payout.canceled", data(gone)
    seen = _seen([made, same, moving, paid, again, other, gone])
    assert [s.payout_moves for s in seen] == [
        ("created",), (), (), ("paid",), (), ("created",), ("canceled",),
    ]  # fmt: skip
    assert [s.payout_amount for s in seen if s.payout_moves] == [3000, 3000, 500, 500]
    assert all(s.currency == "EUR" and not s.attempt and not s.captured for s in seen)


async def test_a_payout_the_bank_returns_is_failed_once_with_its_code(harness: Harness) -> None:
    h = harness
    t = h.add_tenant(gateway_options={"payout_destination": "000111111113"})
    await _settled(h, t, 5000)
    made = await h.send("payout.create", t, {"payout_id": "po1", "amount": 4000, "currency": "EUR"})
    await _gateway(h, t).advance_clock(2 * DAY)
    failed = await h.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(failed) == "payout.failed", data(failed)
    created, gone = _seen([made, failed])
    assert created.payout_moves == ("created",)
    assert (gone.payout_moves, gone.payout_failure) == (("failed",), "account_closed")


async def test_tax_collected_by_payments_and_invoices(harness: Harness) -> None:
    """A taxed payment (1,200 GBP with 200 tax), a manual one captured in part (half:
    100 of its 200), a taxed subscription's first invoice (1,999 + 400 tax) and a renewal
    read back (400), read again (none); an untaxed payment collects none."""
    h = harness
    t = h.add_tenant()
    await _rate(h, t, inclusive=True)
    calc = data(await _calc(h, t, 1200))["object"]
    assert calc["amount_tax"] == 200, calc
    body: dict[str, Any] = {
        "amount": 1200, "currency": "GBP", "payment_method_token": "pm_card_visa",
        "tax_calculation_id": calc["id"],
    }  # fmt: skip
    paid = await h.send("payment.create", t, body)
    held = await h.send("payment.create", t, {**body, "capture": "manual"})
    captured = await h.send(
        "payment.capture", t, {"payment_id": data(held)["object"]["id"], "amount": 600}
    )
    assert kind(captured) == "payment.succeeded", data(captured)
    plain = await h.send("payment.create", t, {**body, "tax_calculation_id": None})
    await _rate(h, t, "vat_ex")
    await h.send("customer.create", t, {"customer_id": "c1"})
    card = {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "m1"}
    await h.send("payment_method.attach", t, card)
    sub = {
        "subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1",
        "currency": "GBP", "interval": "month", "amount": 1999, "tax_rate_ids": ["vat_ex"],
    }  # fmt: skip
    created = await h.send("subscription.create", t, sub)
    assert kind(created) == "subscription.created", data(created)
    await _gateway(h, t).advance_clock(32 * DAY)
    renewed = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
    again = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
    seen = _seen([paid, held, captured, plain, created, renewed, again])
    assert [s.tax_collected for s in seen] == [
        (("GBP", "payments", 200),), (), (("GBP", "payments", 100),), (),
        (("GBP", "invoices", 400),), (("GBP", "invoices", 400),), (),
    ]  # fmt: skip
