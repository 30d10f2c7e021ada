"""Tax inputs checked (review h74h found these correct; kept as tests): a payment with
and without its calculation hash apart and conflict under one key; hostile percentage
strings refused; a card number in a rate's text refused and never echoed; another
tenant's calculation reads exactly as an unknown one."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.agents.idempotency_keeping import request_hash
from paystream.streams.commands import CreatePayment, CreateSubscription
from tests.agents.harness import Harness, data, kind

VAT = {"display_name": "VAT", "percentage": "20", "inclusive": False, "country": "GB"}


async def _rate(h: Harness, t: str, rid: str, **kw: Any) -> dict[str, Any]:
    out = await h.send("tax_rate.create", t, {**VAT, "tax_rate_id": rid, **kw})
    assert kind(out) == "tax_rate.created", data(out)
    return dict(data(out)["object"])


def test_a_payment_with_and_without_its_calculation_hash_apart() -> None:
    base = {"amount": 1200, "currency": "GBP", "payment_method_token": "pm_card_visa"}
    plain = CreatePayment.model_validate(base)
    taxed = CreatePayment.model_validate({**base, "tax_calculation_id": "taxcalc_x"})
    other = CreatePayment.model_validate({**base, "tax_calculation_id": "taxcalc_y"})
    explicit_none = CreatePayment.model_validate({**base, "tax_calculation_id": None})
    hashes = {request_hash("payment.create", m) for m in (plain, taxed, other)}
    assert len(hashes) == 3
    assert request_hash("payment.create", explicit_none) == request_hash("payment.create", plain)
    sub = {
        "customer_id": "c1",
        "payment_method_id": "m1",
        "currency": "GBP",
        "interval": "month",
        "amount": 100,
    }
    s_plain = CreateSubscription.model_validate(sub)
    s_taxed = CreateSubscription.model_validate({**sub, "tax_rate_ids": ["vat"]})
    assert request_hash("subscription.create", s_plain) != request_hash(
        "subscription.create", s_taxed
    )


@pytest.mark.asyncio
async def test_a_payment_with_and_without_its_calculation_conflict(harness: Harness) -> None:
    t = harness.add_tenant()
    await _rate(harness, t, "vat")
    calc = data(
        await harness.send(
            "tax.calculate",
            t,
            {
                "currency": "GBP",
                "line_items": [{"amount": 1000, "reference": "l1"}],
                "tax_rate_ids": ["vat"],
            },
        )
    )["object"]
    base = {"amount": 1200, "currency": "GBP", "payment_method_token": "pm_card_visa"}
    first = await harness.send("payment.create", t, base, command_id="k-1")
    assert kind(first) == "payment.succeeded", data(first)
    taxed = await harness.send(
        "payment.create", t, {**base, "tax_calculation_id": calc["id"]}, command_id="k-1"
    )
    assert data(taxed)["reason"] == "idempotency_conflict", data(taxed)


@pytest.mark.parametrize(
    "pct",
    ["20.00000", "1e1", "NaN", "Infinity", "-0", "+20", "0x14", "\uff12\uff10", "20,5", "101"],
)
@pytest.mark.asyncio
async def test_hostile_percentages_are_refused(harness: Harness, pct: str) -> None:
    t = harness.add_tenant()
    out = await harness.send("tax_rate.create", t, {**VAT, "percentage": pct})
    assert data(out)["reason"] == "validation_error", data(out)


@pytest.mark.parametrize("field", ["display_name", "description", "jurisdiction"])
@pytest.mark.asyncio
async def test_a_card_number_in_a_rates_text_is_refused(harness: Harness, field: str) -> None:
    t = harness.add_tenant()
    out = await harness.send("tax_rate.create", t, {**VAT, field: "4242 4242 4242 4242"})
    assert kind(out) == "command.rejected", data(out)
    assert "4242 4242 4242 4242" not in str(data(out))


@pytest.mark.asyncio
async def test_another_tenants_calculation_reads_exactly_as_an_unknown_one(
    harness: Harness,
) -> None:
    a, b = harness.add_tenant(), harness.add_tenant()
    await _rate(harness, a, "vat")
    calc = data(
        await harness.send(
            "tax.calculate",
            a,
            {
                "currency": "GBP",
                "line_items": [{"amount": 1000, "reference": "l1"}],
                "tax_rate_ids": ["vat"],
            },
        )
    )["object"]
    body = {"amount": 1200, "currency": "GBP", "payment_method_token": "pm_card_visa"}
    theirs = await harness.send("payment.create", b, {**body, "tax_calculation_id": calc["id"]})
    unknown = await harness.send(
        "payment.create", b, {**body, "tax_calculation_id": "taxcalc_" + "0" * 26}
    )
    assert data(theirs)["reason"] == data(unknown)["reason"] == "not_found"
    assert data(theirs)["message"].replace(calc["id"], "X") == data(unknown)["message"].replace(
        "taxcalc_" + "0" * 26, "X"
    )
