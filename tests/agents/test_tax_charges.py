"""A tax calculation's total can be charged, and a taxed payment's record says the tax
it collects (review h74h):

* in a three-decimal currency (BHD, JOD, KWD, OMR, TND) every tax is rounded, half up,
  to the currency's chargeable increment (10 minor units: Stripe's rule, which the
  simulator applies), so a taxed payment or subscription there can be charged;
* a partial capture pro-rates the payment's ``amount_tax`` (half up, integers; a whole
  capture keeps it exactly), and a cancel leaves none collected;
* a calculation's expiry runs from the command's time capped at the worker's clock plus
  the limits' skew: a producer's ``time`` years ahead no longer keeps it alive for years."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from paystream.agents.handlers import entity_key
from tests.agents.harness import Harness, data, kind
from tests.agents.test_subscriptions import _charges, _customer, _invoices

pytestmark = pytest.mark.asyncio
VAT = {"display_name": "VAT", "percentage": "20", "inclusive": False, "country": "GB"}


async def _rate(h: Harness, t: str, rid: str = "vat", **kw: Any) -> None:
    out = await h.send("tax_rate.create", t, {**VAT, "tax_rate_id": rid, **kw})
    assert kind(out) == "tax_rate.created", data(out)


async def _calc(
    h: Harness, t: str, amount: int, currency: str, rates: list[str], **kw: Any
) -> dict[str, Any]:
    out = await h.send(
        "tax.calculate",
        t,
        {
            "currency": currency,
            "line_items": [{"amount": amount, "reference": "l1"}],
            "tax_rate_ids": rates,
        },
        **kw,
    )
    assert kind(out) == "tax.calculated", data(out)
    return dict(data(out)["object"])


async def _pay(h: Harness, t: str, calc: dict[str, Any], **kw: Any) -> Any:
    body = {
        "amount": calc["amount_total"],
        "currency": calc["currency"],
        "payment_method_token": "pm_card_visa",
        "tax_calculation_id": calc["id"],
        **kw,
    }
    return await h.send("payment.create", t, body)


# ---- three-decimal currencies ----------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "inclusive", "tax", "total"),
    [
        (1000, False, 80, 1080),  # 75 fils -> 80
        (1990, False, 150, 2140),  # 149.25 -> 150
        (1000, True, 70, 1000),  # 69.77 contained -> 70; the price stays chargeable
    ],
)
async def test_a_taxed_payment_in_kwd_can_be_charged(
    harness: Harness, amount: int, inclusive: bool, tax: int, total: int
) -> None:
    t = harness.add_tenant()
    await _rate(harness, t, "kw", percentage="7.5", country="KW", inclusive=inclusive)
    calc = await _calc(harness, t, amount, "KWD", ["kw"])
    assert (calc["amount_tax"], calc["amount_total"]) == (tax, total), calc
    pay = await _pay(harness, t, calc)
    assert kind(pay) == "payment.succeeded", data(pay)
    assert data(pay)["object"]["amount_tax"] == tax


async def test_a_taxed_subscription_in_kwd_can_be_made(harness: Harness) -> None:
    """KWD 1.990 a month with 7.5% exclusive: 149.25 fils of tax, 150 (not 149: 2139
    is no amount Stripe takes in KWD), 2140 charged every period."""
    t = harness.add_tenant()
    await _rate(harness, t, "kw", percentage="7.5", country="KW")
    await _customer(harness, t)
    body = {
        "subscription_id": "s1",
        "customer_id": "c1",
        "payment_method_id": "m1",
        "currency": "KWD",
        "interval": "month",
        "amount": 1990,
        "tax_rate_ids": ["kw"],
    }
    out = await harness.send("subscription.create", t, body)
    assert kind(out) == "subscription.created", data(out)
    [invoice] = [r["object"] for r in _invoices(out)]
    assert (invoice["subtotal"], invoice["tax"], invoice["total"]) == (1990, 150, 2140)
    assert [c.amount for c in await _charges(harness, t)] == [2140]


async def test_two_decimal_and_zero_decimal_tax_is_still_to_the_minor_unit(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    await _rate(harness, t, "kw", percentage="7.5")
    assert (await _calc(harness, t, 1000, "GBP", ["kw"]))["amount_tax"] == 75
    assert (await _calc(harness, t, 1000, "JPY", ["kw"]))["amount_tax"] == 75


# ---- the tax a payment collects ---------------------------------------------------------


async def _authorized(h: Harness, t: str) -> None:
    """Payment p1: 1200 with 200 of VAT in it, authorized (capture later)."""
    await _rate(h, t)
    calc = await _calc(h, t, 1000, "GBP", ["vat"])
    made = await _pay(h, t, calc, payment_id="p1", capture="manual")
    assert kind(made) == "payment.authorized", data(made)
    assert data(made)["object"]["amount_tax"] == 200


async def test_a_partial_capture_pro_rates_the_tax(harness: Harness) -> None:
    """600 of 1200 captured: 100 of tax collected, not 200 (a tax report summing
    amount_tax of succeeded payments overstated it by 100)."""
    t = harness.add_tenant()
    await _authorized(harness, t)
    cap = await harness.send("payment.capture", t, {"payment_id": "p1", "amount": 600})
    assert kind(cap) == "payment.succeeded", data(cap)
    assert data(cap)["object"]["amount_tax"] == 100  # the outcome says so
    stored = harness.tables.payments[entity_key(t, "p1")]
    assert (stored["amount_captured"], stored["amount_tax"]) == (600, 100), stored
    # Read back later, the capture is not pro-rated again.
    again = await harness.send("payment.refresh", t, {"payment_id": "p1"})
    assert data(again)["object"]["amount_tax"] == 100, data(again)


@pytest.mark.parametrize(("captured", "tax"), [(1200, 200), (1199, 200), (33, 6), (31, 5)])
async def test_the_pro_rated_tax_is_rounded_half_up(
    harness: Harness, captured: int, tax: int
) -> None:
    # 200 x 1199 / 1200 = 199.83 -> 200; x 33 / 1200 = 5.5 -> 6; x 31 / 1200 = 5.17 -> 5.
    t = harness.add_tenant()
    await _authorized(harness, t)
    cap = await harness.send("payment.capture", t, {"payment_id": "p1", "amount": captured})
    assert kind(cap) == "payment.succeeded", data(cap)
    assert data(cap)["object"]["amount_tax"] == tax


async def test_a_canceled_payment_collected_no_tax(harness: Harness) -> None:
    t = harness.add_tenant()
    await _authorized(harness, t)
    out = await harness.send("payment.cancel", t, {"payment_id": "p1"})
    assert kind(out) == "payment.canceled", data(out)
    stored = harness.tables.payments[entity_key(t, "p1")]
    assert (stored["amount_captured"], stored["amount_tax"]) == (0, 0), stored
    assert stored["tax_calculation_id"] is not None  # (the calculation keeps its figure)


# ---- a calculation's expiry -------------------------------------------------------------


async def test_a_calculation_with_a_future_record_time_does_not_outlive_its_day(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    await _rate(harness, t)
    # The CloudEvent's own ``time`` (the producer's clock; it becomes ctx.cmd.time).
    ten_years = datetime.now(UTC) + timedelta(days=3650)
    calc = await _calc(harness, t, 1000, "GBP", ["vat"], attributes={"time": ten_years})
    expires = datetime.fromisoformat(calc["expires_at"])
    # Capped at the worker's clock plus the limits' 60 s skew, then 24 hours.
    assert expires - datetime.now(UTC) <= timedelta(hours=24, minutes=2), expires
    assert expires - datetime.now(UTC) > timedelta(hours=23), expires


# ---- an invoice's total is the provider's -----------------------------------------------


async def test_an_invoices_total_is_the_providers_not_what_was_paid(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider reporting 500 of a 2399 invoice paid from the customer's credit
    balance (Stripe: amount_paid 1899, total 2399): the invoice keeps the total 2399,
    subtotal 1999 + tax 400, and ``amount`` 1899 (was total 1899)."""
    from paystream.gateways.simulator import results

    plain = results.invoice

    def credited(inv: dict[str, Any]) -> dict[str, Any]:
        out = plain(inv)
        if inv.get("tax") is not None:
            out["amount"] = {**out["amount"], "amount": inv["amount"] - 500}
        return out

    monkeypatch.setattr(results, "invoice", credited)
    t = harness.add_tenant()
    await _rate(harness, t)
    await _customer(harness, t)
    body = {
        "subscription_id": "s1",
        "customer_id": "c1",
        "payment_method_id": "m1",
        "currency": "GBP",
        "interval": "month",
        "amount": 1999,
        "tax_rate_ids": ["vat"],
    }
    out = await harness.send("subscription.create", t, body)
    assert kind(out) == "subscription.created", data(out)
    [invoice] = [r["object"] for r in _invoices(out)]
    assert (invoice["subtotal"], invoice["tax"], invoice["total"], invoice["amount"]) == (
        1999, 400, 2399, 1899,
    )  # fmt: skip
