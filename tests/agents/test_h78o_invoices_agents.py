"""Review h78o: one-off invoices held to the tenant's limits through the pipeline, on the
real simulator (M4: a send_invoice invoice is paid on the provider's page, never by an
invoice.pay the limits see, so invoice.create is held to max_payment_amount and
only_listed_currencies on its total with exclusive tax)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.agents.harness import Harness, data, kind
from tests.agents.test_invoices import _customer_with, _made, _rejected

pytestmark = pytest.mark.asyncio

SENT = {"collection_method": "send_invoice", "days_until_due": 7}


async def _create(h: Harness, t: str, currency: str, amount: int, **kw: Any) -> Any:
    cus, _ = await _customer_with(h, t)
    line = {"description": "Consulting", "amount": amount, "quantity": 5}
    body = {"customer_id": cus, "currency": currency, "line_items": [line], **SENT, **kw}
    return await h.send("invoice.create", t, body)


async def test_M4_a_sent_invoice_over_the_tenants_cap_is_refused_at_create(
    harness: Harness,
) -> None:
    """A tenant capped at 100.00 EUR a payment billed 500.00 through a sent invoice,
    unchecked: refused at create, before its provider is asked; nothing held toward the
    day (a draft charges nothing)."""
    limits = {"max_payment_amount": {"EUR": 10_000}, "daily_payment_volume": {"EUR": 80_000}}
    t = harness.add_tenant(limits=limits)
    out = await _create(harness, t, "EUR", 10_000)  # 5 x 100.00
    assert "per-payment limit" in _rejected(out, "quota_exceeded")
    assert data(out)["limit"] == "max_payment_amount" and data(out)["allowed"] == 10_000
    assert not harness.tables.invoices.get(f"{t}:{data(out).get('invoice_id')}")
    under = await _create(harness, t, "EUR", 2_000)  # 100.00: at the cap
    assert kind(under) == "invoice.created", data(under)
    state = harness.processor.limits.table[f"{t}:limits"]
    assert not state.get("held") and not (state.get("volume") or {}).get("EUR"), state


async def test_M4_the_cap_holds_the_total_with_its_exclusive_tax(harness: Harness) -> None:
    """The total is the line total plus exclusive tax, as invoice.pay holds it: 5 x 19.00
    + 10% is 104.50, over a 100.00 cap; an inclusive rate adds nothing."""
    t = harness.add_tenant(limits={"max_payment_amount": {"EUR": 10_000}})
    excl = await _made(
        harness, t, "tax_rate.create",
        {"display_name": "VAT", "percentage": "10", "inclusive": False, "country": "FR"},
    )  # fmt: skip
    incl = await _made(
        harness, t, "tax_rate.create",
        {"display_name": "VAT", "percentage": "10", "inclusive": True, "country": "FR"},
    )  # fmt: skip
    out = await _create(harness, t, "EUR", 1_900, tax_rate_ids=[excl["id"]])
    assert "104.50" in _rejected(out, "quota_exceeded")
    ok = await _create(harness, t, "EUR", 1_900, tax_rate_ids=[incl["id"]])
    assert kind(ok) == "invoice.created", data(ok)


async def test_M4_an_unlisted_currency_is_refused_at_create(harness: Harness) -> None:
    limits = {"max_payment_amount": {"EUR": 10_000}, "only_listed_currencies": True}
    t = harness.add_tenant(limits=limits)
    out = await _create(harness, t, "USD", 100)
    _rejected(out, "quota_exceeded")
    assert data(out)["limit"] == "currencies", data(out)
