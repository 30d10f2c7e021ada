"""Tax through the pipeline, on the real simulator: tax rates made and archived, tax
calculated from them, a payment carrying its calculation, a subscription's invoices
taxed; every rejection; idempotent replay and conflict; another tenant's rate or
calculation not found."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from paystream.agents.handlers import entity_key
from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio
DAY = 24 * 3600
VAT = {"display_name": "VAT", "percentage": "20", "inclusive": False, "country": "GB"}
VAT_INC = {**VAT, "display_name": "VAT (incl.)", "inclusive": True}


def _gateway(h: Harness, tenant: str) -> SimulatorGateway:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


async def _rate(h: Harness, t: str, rid: str = "vat", **kw: Any) -> dict[str, Any]:
    out = await h.send("tax_rate.create", t, {**VAT, "tax_rate_id": rid, **kw})
    assert kind(out) == "tax_rate.created", data(out)
    return data(out)["object"]


async def _calc(
    h: Harness, t: str, amount: int = 1000, command_id: str | None = None, **kw: Any
) -> Any:
    body = {
        "currency": "GBP",
        "line_items": [{"amount": amount, "reference": "l1"}],
        "tax_rate_ids": ["vat"],
        **kw,
    }
    return await h.send("tax.calculate", t, body, command_id=command_id)


def _rejected(out: Any, reason: str) -> dict[str, Any]:
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == reason, data(out)
    return data(out)


async def test_a_rate_is_made_at_the_provider_and_recorded(harness: Harness) -> None:
    t = harness.add_tenant()
    rate = await _rate(harness, t)
    assert rate["status"] == "active" and rate["percentage"] == "20"
    assert rate["provider_tax_rate_id"].startswith("txr_") and rate["country"] == "GB"
    effects = [e.kind for e in await _gateway(harness, t).effects()]
    assert effects == ["tax_rate.created"]


@pytest.mark.parametrize(
    "body",
    [
        {**VAT, "percentage": 20},  # a JSON number: never a float's way in
        {**VAT, "percentage": 20.5},
        {**VAT, "percentage": "100.5"},
        {**VAT, "percentage": "7.12345"},
        {**VAT, "percentage": "-1"},
        {**VAT, "country": "GBR"},
        {**VAT, "country": "gb"},
        {**VAT, "tax_type": "poll_tax"},
        {k: v for k, v in VAT.items() if k != "inclusive"},
        {**VAT, "display_name": ""},
    ],
)
async def test_a_rate_is_validated(harness: Harness, body: dict[str, Any]) -> None:
    t = harness.add_tenant()
    _rejected(await harness.send("tax_rate.create", t, body), "validation_error")


async def test_a_rate_replayed_is_answered_once_and_a_conflict_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    body = {**VAT, "tax_rate_id": "vat"}
    first = await harness.send("tax_rate.create", t, body, command_id="cmd-1")
    again = await harness.send("tax_rate.create", t, body, command_id="cmd-1")
    assert (kind(again), again.get_id()) == (kind(first), first.get_id())
    assert [e.kind for e in await _gateway(harness, t).effects()] == ["tax_rate.created"]
    other = await harness.send(
        "tax_rate.create", t, {**body, "percentage": "5"}, command_id="cmd-1"
    )
    _rejected(other, "idempotency_conflict")
    taken = await harness.send("tax_rate.create", t, {**body, "percentage": "5"})
    _rejected(taken, "invalid_state")


async def test_archive_then_apply_or_archive_again_is_invalid_state(harness: Harness) -> None:
    t = harness.add_tenant()
    await _rate(harness, t)
    out = await harness.send("tax_rate.archive", t, {"tax_rate_id": "vat"})
    assert kind(out) == "tax_rate.archived" and data(out)["object"]["status"] == "archived"
    _rejected(await harness.send("tax_rate.archive", t, {"tax_rate_id": "vat"}), "invalid_state")
    _rejected(await _calc(harness, t), "invalid_state")
    kinds = [e.kind for e in await _gateway(harness, t).effects()]
    assert kinds == ["tax_rate.created", "tax_rate.archived"]


async def test_another_tenants_rate_and_calculation_are_not_found(harness: Harness) -> None:
    a, b = harness.add_tenant(), harness.add_tenant()
    await _rate(harness, a)
    calc = await _calc(harness, a)
    assert kind(calc) == "tax.calculated", data(calc)
    _rejected(await _calc(harness, b), "not_found")
    _rejected(await harness.send("tax_rate.archive", b, {"tax_rate_id": "vat"}), "not_found")
    missing = await harness.send("tax_rate.archive", a, {"tax_rate_id": "nope"})
    # Exactly as a rate that exists nowhere (no tell that another tenant holds one).
    assert data(missing)["message"].replace("nope", "X") == (
        data(await harness.send("tax_rate.archive", b, {"tax_rate_id": "vat"}))["message"]
    ).replace("vat", "X")
    pay = {
        "amount": 1200,
        "currency": "GBP",
        "payment_method_token": "pm_card_visa",
        "tax_calculation_id": data(calc)["object"]["id"],
    }
    _rejected(await harness.send("payment.create", b, pay), "not_found")


async def test_square_has_no_tax_rates(harness: Harness) -> None:
    t = harness.add_tenant()
    harness.tenants[t] = {
        **harness.tenants[t],
        "gateway_options": {"capabilities": ["customers", "payment_methods", "payments"]},
    }
    _rejected(await harness.send("tax_rate.create", t, VAT), "unsupported")
    assert await _gateway(harness, t).effects() == []


async def test_calculate_exclusive_and_inclusive(harness: Harness) -> None:
    t = harness.add_tenant()
    await _rate(harness, t)
    await _rate(harness, t, "vat_inc", **{k: VAT_INC[k] for k in ("inclusive", "display_name")})
    out = await harness.send(
        "tax.calculate",
        t,
        {
            "currency": "GBP",
            "line_items": [
                {"amount": 1000, "reference": "book", "quantity": 2},
                {"amount": 1200, "reference": "hat", "tax_rate_ids": ["vat_inc"]},
                {"amount": 500, "reference": "free", "tax_rate_ids": []},
            ],
            "tax_rate_ids": ["vat"],
        },
    )
    assert kind(out) == "tax.calculated", data(out)
    calc = data(out)["object"]
    assert calc["id"].startswith("taxcalc_")
    assert (calc["amount_subtotal"], calc["amount_tax"], calc["amount_total"]) == (
        3700,
        400 + 200,
        3700 + 400,
    )
    lines = {line["reference"]: line for line in calc["line_items"]}
    assert lines["book"]["taxes"][0]["amount"] == 400
    assert lines["hat"]["taxable_amount"] == 1000 and lines["hat"]["amount_tax"] == 200
    assert lines["free"]["taxes"] == []
    assert calc["tax_by_rate"] == {"vat": 400, "vat_inc": 200}
    expires = datetime.fromisoformat(calc["expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24, minutes=1)
    # No provider was asked.
    assert [e.kind for e in await _gateway(harness, t).effects()] == ["tax_rate.created"] * 2


@pytest.mark.parametrize(
    "body",
    [
        {"currency": "GBP", "line_items": []},
        {"currency": "GBP", "line_items": [{"amount": 1, "reference": "a"}] * 2},  # same ref
        {"currency": "GBP", "line_items": [{"amount": 1, "reference": "a", "quantity": 0}]},
        {"currency": "GBP", "line_items": [{"amount": -1, "reference": "a"}]},
        {"currency": "GBP", "line_items": [{"amount": 1.5, "reference": "a"}]},
        {
            "currency": "GBP",
            "line_items": [{"amount": 1, "reference": "a", "tax_rate_ids": list("abcdef")}],
        },
        {
            "currency": "GBP",
            "line_items": [{"amount": 1, "reference": "a"}],
            "tax_rate_ids": ["a", "a"],
        },
        {"currency": "XXX", "line_items": [{"amount": 1, "reference": "a"}]},
        {
            "currency": "GBP",
            "line_items": [{"amount": 10**11, "reference": "a", "quantity": 100}],
        },
        {
            "currency": "GBP",
            "line_items": [{"amount": 1, "reference": f"r{i}"} for i in range(101)],
        },
    ],
)
async def test_a_calculation_is_validated(harness: Harness, body: dict[str, Any]) -> None:
    t = harness.add_tenant()
    _rejected(await harness.send("tax.calculate", t, body), "validation_error")


async def test_a_calculation_over_the_largest_payment_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    await _rate(harness, t, percentage="100")
    line = [{"amount": 999_999_999_999, "reference": "all"}]
    _rejected(await _calc(harness, t, line_items=line), "validation_error")


async def test_a_calculation_replayed_is_the_same_calculation(harness: Harness) -> None:
    t = harness.add_tenant()
    await _rate(harness, t)
    first = await _calc(harness, t, command_id="c-1")
    again = await _calc(harness, t, command_id="c-1")
    assert (again.get_id(), data(again)) == (first.get_id(), data(first))
    other = await _calc(harness, t, amount=5, command_id="c-1")
    _rejected(other, "idempotency_conflict")


async def _taxed_payment(h: Harness, t: str, calc_id: str, amount: int, **kw: Any) -> Any:
    body = {
        "payment_id": "p1",
        "amount": amount,
        "currency": "GBP",
        "payment_method_token": "pm_card_visa",
        "tax_calculation_id": calc_id,
        **kw,
    }
    return await h.send("payment.create", t, body)


async def test_a_payment_carries_its_calculations_tax(harness: Harness) -> None:
    t = harness.add_tenant()
    await _rate(harness, t)
    calc = data(await _calc(harness, t))["object"]
    out = await _taxed_payment(harness, t, calc["id"], 1200)
    assert kind(out) == "payment.succeeded", data(out)
    payment = data(out)["object"]
    assert (payment["amount_tax"], payment["tax_calculation_id"]) == (200, calc["id"])
    stored = harness.tables.payments[entity_key(t, "p1")]
    assert stored["amount_tax"] == 200


async def test_a_payment_without_tax_carries_no_tax_fields(harness: Harness) -> None:
    t = harness.add_tenant()
    out = await harness.send(
        "payment.create",
        t,
        {"amount": 500, "currency": "GBP", "payment_method_token": "pm_card_visa"},
    )
    assert "amount_tax" not in data(out)["object"]
    assert "tax_calculation_id" not in data(out)["object"]


async def test_a_payment_not_matching_its_calculation_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    await _rate(harness, t)
    calc = data(await _calc(harness, t))["object"]
    mismatch = _rejected(await _taxed_payment(harness, t, calc["id"], 1000), "validation_error")
    assert "amount_total" in mismatch["message"]
    other_currency = await _taxed_payment(harness, t, calc["id"], 1200, currency="EUR")
    _rejected(other_currency, "validation_error")
    _rejected(await _taxed_payment(harness, t, "taxcalc_nope", 1200), "not_found")
    assert [e.kind for e in await _gateway(harness, t).effects()] == ["tax_rate.created"]


async def test_a_payment_naming_an_expired_calculation_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    await _rate(harness, t)
    calc = data(await _calc(harness, t))["object"]
    key = entity_key(t, calc["id"])
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    harness.tables.tax_calculations[key] = {
        **harness.tables.tax_calculations[key],
        "expires_at": past,
    }
    out = _rejected(await _taxed_payment(harness, t, calc["id"], 1200), "invalid_state")
    assert "expired" in out["message"]


async def test_a_subscriptions_invoices_carry_its_tax(harness: Harness) -> None:
    t = harness.add_tenant()
    await _rate(harness, t)
    await _rate(harness, t, "vat_inc", inclusive=True)
    await harness.send("customer.create", t, {"customer_id": "c1"})
    await harness.send(
        "payment_method.attach",
        t,
        {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "m1"},
    )
    body = {"customer_id": "c1", "payment_method_id": "m1", "currency": "GBP", "interval": "month"}
    out = await harness.send(
        "subscription.create",
        t,
        {**body, "subscription_id": "s1", "amount": 1999, "tax_rate_ids": ["vat"]},
    )
    assert kind(out) == "subscription.created", data(out)
    assert data(out)["object"]["tax_rate_ids"] == ["vat"]
    (invoice,) = [r["object"] for r in data(out)["related"] if r["entity_type"] == "invoice"]
    # 1999 + 20% (399.8 -> 400) charged.
    assert (invoice["subtotal"], invoice["tax"], invoice["total"], invoice["amount"]) == (
        1999, 400, 2399, 2399,
    )  # fmt: skip
    charges = [e for e in await _gateway(harness, t).effects() if e.kind == "charge"]
    assert [c.amount for c in charges] == [2399]
    # Renewals are taxed the same; an inclusive rate is contained in the amount.
    await _gateway(harness, t).advance_clock(32 * DAY)
    renewed = await harness.send("subscription.refresh", t, {"subscription_id": "s1"})
    (again,) = [r["object"] for r in data(renewed)["related"] if r["entity_type"] == "invoice"]
    assert (again["tax"], again["total"]) == (400, 2399)
    inc = await harness.send(
        "subscription.create",
        t,
        {**body, "subscription_id": "s2", "amount": 1200, "tax_rate_ids": ["vat_inc"]},
    )
    (inv,) = [r["object"] for r in data(inc)["related"] if r["entity_type"] == "invoice"]
    assert (inv["subtotal"], inv["tax"], inv["total"], inv["amount"]) == (1200, 200, 1200, 1200)


async def test_a_taxed_invoice_settles_its_total_into_the_balance(harness: Harness) -> None:
    """What the customer was charged, tax included, is what the tenant's balance gets
    (the tenant remits the tax itself): pending, then available after the delay."""
    t = harness.add_tenant()
    await _rate(harness, t)
    await harness.send("customer.create", t, {"customer_id": "c1"})
    await harness.send(
        "payment_method.attach",
        t,
        {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "m1"},
    )
    out = await harness.send(
        "subscription.create",
        t,
        {"customer_id": "c1", "payment_method_id": "m1", "currency": "GBP", "interval": "month",
         "amount": 1999, "tax_rate_ids": ["vat"]},
    )  # fmt: skip
    assert kind(out) == "subscription.created", data(out)

    async def balance() -> list[dict[str, Any]]:
        read = await harness.send("balance.retrieve", t, {})
        assert kind(read) == "balance.retrieved", data(read)
        return list(data(read)["balances"])

    assert await balance() == [{"currency": "GBP", "available": 0, "pending": 2399}]
    await _gateway(harness, t).advance_clock(2 * DAY)
    assert await balance() == [{"currency": "GBP", "available": 2399, "pending": 0}]


async def test_a_subscription_with_an_archived_or_unknown_rate_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    await _rate(harness, t)
    await harness.send("tax_rate.archive", t, {"tax_rate_id": "vat"})
    await harness.send("customer.create", t, {"customer_id": "c1"})
    await harness.send(
        "payment_method.attach",
        t,
        {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "m1"},
    )
    body = {
        "customer_id": "c1",
        "payment_method_id": "m1",
        "currency": "GBP",
        "interval": "month",
        "amount": 100,
    }
    _rejected(
        await harness.send("subscription.create", t, {**body, "tax_rate_ids": ["vat"]}),
        "invalid_state",
    )
    _rejected(
        await harness.send("subscription.create", t, {**body, "tax_rate_ids": ["zz"]}), "not_found"
    )
    assert not [e for e in await _gateway(harness, t).effects() if e.kind == "charge"]


async def test_expired_calculations_leave_the_tables_and_rates_stay() -> None:
    from paystream.tables.retention import expired

    now = datetime.now(UTC).timestamp()
    applied = {"c": {"at": now - 10 * DAY}}
    calc = {"entity_type": "tax_calculation", "applied": applied}
    old = {**calc, "expires_at": datetime.fromtimestamp(now - 9 * DAY, UTC).isoformat()}
    live = {**calc, "expires_at": datetime.fromtimestamp(now + 60, UTC).isoformat()}
    assert expired(old, now, 7 * DAY)
    assert not expired(live, now, 7 * DAY)  # (a short retention never takes a live one)
    assert not expired({**old, "expires_at": None}, now, 7 * DAY)
    rate = {"entity_type": "tax_rate", "status": "archived", "applied": applied}
    assert not expired(rate, now, 7 * DAY)
