"""One-off invoices through the pipeline, on the real simulator: invoice.create (a draft),
invoice.finalize, invoice.pay (a decline is invoice.payment_failed, the invoice left
open), invoice.void, invoice.refresh; their refusals (illegal moves, another tenant's
invoice, a subscription's invoice, a tenant without invoices) and their replays (one
charge however often a pay is delivered or re-driven)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from paystream.gateways import base as gw
from paystream.gateways.errors import UnsupportedOperation
from paystream.gateways.paddle.gateway import PADDLE_CAPABILITIES
from paystream.gateways.simulator.gateway import SIMULATOR_CAPABILITIES
from paystream.gateways.square.gateway import SQUARE_CAPABILITIES
from paystream.money import Money
from paystream.streams.commands import COMMANDS, PROVIDER_READS
from tests.agents.harness import Harness, data, kind, new_tenant_id, outcome_of, simulator_of
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio

LINES = [
    {"description": "Consulting, hours", "amount": 15000, "quantity": 3},
    {"description": "Setup fee", "amount": 5000},
]


async def _made(h: Harness, t: str, command_type: str, body: dict[str, Any]) -> dict[str, Any]:
    out = await h.send(command_type, t, body)
    assert not kind(out).endswith("rejected"), data(out)
    return data(out)["object"]


async def _customer_with(h: Harness, t: str, token: str = "pm_card_visa") -> tuple[str, str]:
    cus = await _made(h, t, "customer.create", {"email": "a@example.com"})
    pm = await _made(h, t, "payment_method.attach", {"customer_id": cus["id"], "token": token})
    return cus["id"], pm["id"]


async def _draft(h: Harness, t: str, token: str = "pm_card_visa", **kw: Any) -> dict[str, Any]:
    cus, pm = await _customer_with(h, t, token)
    body = {"customer_id": cus, "payment_method_id": pm, "currency": "EUR", "line_items": LINES}
    return await _made(h, t, "invoice.create", {**body, **kw})


async def _charges(h: Harness, t: str) -> list[Any]:
    return [e for e in await simulator_of(h, t).effects() if e.kind == "charge"]


def _rejected(out: Any, reason: str) -> str:
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == reason, data(out)
    return str(data(out)["message"])


async def test_the_commands_are_registered() -> None:
    names = {"invoice.create", "invoice.finalize", "invoice.pay", "invoice.void"}
    assert names | {"invoice.refresh"} <= set(COMMANDS)
    assert "invoice.refresh" in PROVIDER_READS and not names & PROVIDER_READS
    assert "pay_invoice" in gw.MONEY_MOVING_OPERATIONS
    assert {"void_invoice", "retrieve_invoice"} <= gw.UNNARROWED_OPERATIONS


async def test_a_draft_finalized_and_paid_charges_its_total_once(harness: Harness) -> None:
    t = harness.add_tenant()
    draft = await _draft(harness, t, invoice_id="inv1", description="March", metadata={"o": "7"})
    assert (draft["id"], draft["status"], draft["amount"], draft["currency"]) == (
        "inv1", "draft", 50000, "EUR"
    )  # fmt: skip
    assert draft["subscription_id"] is None and draft["period_start"] is None
    assert draft["line_items"] == [{**LINES[0]}, {**LINES[1], "quantity": 1}]
    assert draft["collection_method"] == "charge_automatically"
    assert draft["description"] == "March" and draft["metadata"] == {"o": "7"}
    assert draft["provider_invoice_id"].startswith("in_")
    assert await _charges(harness, t) == []  # a draft charges nothing

    early = await harness.send("invoice.pay", t, {"invoice_id": "inv1"})
    assert "finalize it first" in _rejected(early, "invalid_state")

    opened = await harness.send("invoice.finalize", t, {"invoice_id": "inv1"})
    assert kind(opened) == "invoice.finalized", data(opened)
    assert data(opened)["object"]["status"] == "open"
    assert data(opened)["previous_status"] == "draft"
    again = await harness.send("invoice.finalize", t, {"invoice_id": "inv1"})
    _rejected(again, "invalid_state")

    paid = await harness.send("invoice.pay", t, {"invoice_id": "inv1"})
    assert kind(paid) == "invoice.paid", data(paid)
    obj = data(paid)["object"]
    assert obj["status"] == "paid" and obj["provider_payment_id"].startswith("pi_")
    assert data(paid)["previous_status"] == "open"
    [charge] = await _charges(harness, t)
    assert (charge.amount, charge.currency) == (50000, "EUR")
    assert harness.tables.invoices[f"{t}:inv1"]["status"] == "paid"

    # Paid is final: no second pay, no void (refund instead); a refresh reads the record
    # (invoice.updated, never a second invoice.paid).
    assert "already paid" in _rejected(
        await harness.send("invoice.pay", t, {"invoice_id": "inv1"}), "invalid_state"
    )
    assert "refund" in _rejected(
        await harness.send("invoice.void", t, {"invoice_id": "inv1"}), "invalid_state"
    )
    read = await harness.send("invoice.refresh", t, {"invoice_id": "inv1"})
    assert kind(read) == "invoice.updated" and data(read)["object"]["status"] == "paid"
    assert len(await _charges(harness, t)) == 1


async def test_a_decline_is_payment_failed_and_the_invoice_stays_open(harness: Harness) -> None:
    t = harness.add_tenant()
    draft = await _draft(harness, t, token="pm_card_chargeCustomerFail")
    await _made(harness, t, "invoice.finalize", {"invoice_id": draft["id"]})
    failed = await harness.send("invoice.pay", t, {"invoice_id": draft["id"]})
    assert kind(failed) == "invoice.payment_failed", data(failed)
    assert data(failed)["object"]["status"] == "open"
    error = data(failed)["error"]
    assert error["code"] == "card_declined" and error["decline_code"] == "generic_decline"
    assert data(failed)["object"]["failure_code"] == "generic_decline"
    assert await _charges(harness, t) == []
    # Paid again under a new command id with another card of the customer's.
    cus = draft["customer_id"]
    other = await _made(
        harness, t, "payment_method.attach", {"customer_id": cus, "token": "pm_card_visa"}
    )
    paid = await harness.send(
        "invoice.pay", t, {"invoice_id": draft["id"], "payment_method_id": other["id"]}
    )
    assert kind(paid) == "invoice.paid", data(paid)
    assert data(paid)["object"]["payment_method_id"] == other["id"]
    assert len(await _charges(harness, t)) == 1


async def test_a_pay_redelivered_charges_once(harness: Harness) -> None:
    t = harness.add_tenant()
    draft = await _draft(harness, t)
    await _made(harness, t, "invoice.finalize", {"invoice_id": draft["id"]})
    first = await harness.send("invoice.pay", t, {"invoice_id": draft["id"]}, command_id="pay-1")
    again = await harness.send("invoice.pay", t, {"invoice_id": draft["id"]}, command_id="pay-1")
    assert kind(first) == kind(again) == "invoice.paid"
    assert data(first)["object"] == data(again)["object"]
    assert len(await _charges(harness, t)) == 1


async def test_a_pay_whose_answer_was_lost_is_answered_from_its_key(harness: Harness) -> None:
    """The provider charged, its answer lost (retried, then parked): the pay re-driven is
    sent under the same key and answered with the first charge, never a second."""
    t = new_tenant_id()
    harness.add_tenant(t)
    draft = await _draft(harness, t)
    await _made(harness, t, "invoice.finalize", {"invoice_id": draft["id"]})
    key = f"ps:{t}:pay-lost"
    harness.tenants[t] = {
        **harness.tenants[t],
        "gateway_options": {"lose_response_first": {key: 1}},
    }
    out = await harness.send("invoice.pay", t, {"invoice_id": draft["id"]}, command_id="pay-lost")
    assert kind(out) == "invoice.paid", data(out)
    assert len(await _charges(harness, t)) == 1
    # (the answer was lost once, then given: two answers counted, this call a third)
    assert await simulator_of(harness, t)._store.count_attempt(key, "answered") == 3


async def test_void_and_its_refusals(harness: Harness) -> None:
    t = harness.add_tenant()
    draft = await _draft(harness, t, invoice_id="v1")
    voided = await harness.send("invoice.void", t, {"invoice_id": "v1"})
    assert kind(voided) == "invoice.voided", data(voided)
    assert data(voided)["object"]["status"] == "void" and data(voided)["previous_status"] == "draft"
    for command_type in ("invoice.void", "invoice.pay", "invoice.finalize"):
        _rejected(await harness.send(command_type, t, {"invoice_id": "v1"}), "invalid_state")
    read = await harness.send("invoice.refresh", t, {"invoice_id": "v1"})
    assert kind(read) == "invoice.updated" and data(read)["object"]["status"] == "void"
    assert draft["status"] == "draft"


async def test_an_open_invoice_voided(harness: Harness) -> None:
    t = harness.add_tenant()
    draft = await _draft(harness, t)
    await _made(harness, t, "invoice.finalize", {"invoice_id": draft["id"]})
    voided = await harness.send("invoice.void", t, {"invoice_id": draft["id"]})
    assert kind(voided) == "invoice.voided" and data(voided)["previous_status"] == "open"


async def test_refresh_reads_the_invoice_back(harness: Harness) -> None:
    t = harness.add_tenant()
    draft = await _draft(harness, t)
    same = await harness.send("invoice.refresh", t, {"invoice_id": draft["id"]})
    assert kind(same) == "invoice.updated" and data(same)["object"]["status"] == "draft"


async def test_a_sent_invoice_is_due_days_after_finalizing(harness: Harness) -> None:
    t = harness.add_tenant()
    cus, _ = await _customer_with(harness, t)
    body = {"customer_id": cus, "currency": "USD", "line_items": LINES[1:]}
    sent = await _made(
        harness, t, "invoice.create",
        {**body, "collection_method": "send_invoice", "days_until_due": 30},
    )  # fmt: skip
    assert sent.get("due_date") is None and sent["payment_method_id"] is None
    opened = await _made(harness, t, "invoice.finalize", {"invoice_id": sent["id"]})
    assert opened["due_date"] is not None
    nothing = await harness.send("invoice.pay", t, {"invoice_id": sent["id"]})
    assert "payment_method_id" in _rejected(nothing, "invalid_state")


async def test_a_taxed_invoice_carries_its_tax(harness: Harness) -> None:
    t = harness.add_tenant()
    rate = {"display_name": "VAT", "percentage": "20", "inclusive": False, "country": "FR"}
    await _made(harness, t, "tax_rate.create", {**rate, "tax_rate_id": "vat"})
    draft = await _draft(harness, t, tax_rate_ids=["vat"])
    assert (draft["subtotal"], draft["tax"], draft["total"]) == (50000, 10000, 60000)
    assert draft["amount"] == 60000 and draft["tax_rate_ids"] == ["vat"]


async def test_create_refusals(harness: Harness) -> None:
    t = harness.add_tenant()
    cus, pm = await _customer_with(harness, t)
    other_cus, _ = await _customer_with(harness, t)
    body = {"customer_id": other_cus, "payment_method_id": pm, "currency": "EUR",
            "line_items": LINES}  # fmt: skip
    assert "another customer" in _rejected(
        await harness.send("invoice.create", t, body), "invalid_state"
    )
    _rejected(
        await harness.send("invoice.create", t, {**body, "customer_id": "nobody"}), "not_found"
    )
    await _made(harness, t, "payment_method.detach", {"payment_method_id": pm})
    _rejected(
        await harness.send("invoice.create", t, {**body, "customer_id": cus}), "invalid_state"
    )
    bad = await harness.send("invoice.create", t, {**body, "payment_method_id": None})
    _rejected(bad, "validation_error")
    assert "needs payment_method_id" in data(bad)["errors"][0]["msg"]


async def test_another_tenants_invoice_is_not_found(harness: Harness) -> None:
    t, u = harness.add_tenant(), harness.add_tenant()
    draft = await _draft(harness, t, invoice_id="mine")
    for command_type in ("invoice.finalize", "invoice.pay", "invoice.void", "invoice.refresh"):
        _rejected(await harness.send(command_type, u, {"invoice_id": draft["id"]}), "not_found")


async def test_a_subscriptions_invoice_is_not_one_off(harness: Harness) -> None:
    t = harness.add_tenant()
    cus, pm = await _customer_with(harness, t)
    sub = await harness.send(
        "subscription.create", t,
        {"customer_id": cus, "payment_method_id": pm, "amount": 900, "currency": "EUR",
         "interval": "month"},
    )  # fmt: skip
    [invoice] = data(sub)["related"]
    out = await harness.send("invoice.void", t, {"invoice_id": invoice["entity_id"]})
    assert "subscription" in _rejected(out, "invalid_state")


async def test_a_tenant_without_invoices_is_refused_before_any_call(harness: Harness) -> None:
    t = harness.add_tenant()
    cus, pm = await _customer_with(harness, t)
    narrowed = sorted(c.value for c in SIMULATOR_CAPABILITIES if c is not gw.Capability.INVOICES)
    harness.tenants[t] = {**harness.tenants[t], "gateway_options": {"capabilities": narrowed}}
    body = {"customer_id": cus, "payment_method_id": pm, "currency": "EUR", "line_items": LINES}
    out = await harness.send("invoice.create", t, body)
    assert "invoices" in _rejected(out, "unsupported")
    assert [
        e for e in await simulator_of(harness, t).effects() if e.kind.startswith("invoice")
    ] == []


@pytest.mark.parametrize("capabilities", [SQUARE_CAPABILITIES, PADDLE_CAPABILITIES])
async def test_square_and_paddle_lack_invoices(capabilities: frozenset[gw.Capability]) -> None:
    assert gw.Capability.INVOICES not in capabilities
    for operation in ("create_invoice", "finalize_invoice", "pay_invoice", "void_invoice"):
        with pytest.raises(UnsupportedOperation):
            gw.require_operation(operation, capabilities, capabilities, "square")


async def test_retention_settles_a_paid_or_void_one_off_invoice_only() -> None:
    from paystream.tables.retention import settled

    one_off = {"entity_type": "invoice", "subscription_id": None, "collection_method": "x"}
    for status in ("paid", "void"):
        assert settled({**one_off, "status": status})
        # (a subscription's goes with its subscription)
        assert not settled({"entity_type": "invoice", "status": status, "subscription_id": "s"})
        assert not settled({"entity_type": "invoice", "status": status})
    for live in ("draft", "open"):
        assert not settled({**one_off, "status": live})


async def _open_invoice(h: Harness, t: str, **kw: Any) -> str:
    draft = await _draft(h, t, **kw)
    await _made(h, t, "invoice.finalize", {"invoice_id": draft["id"]})
    return str(draft["id"])


async def test_a_pay_over_the_tenants_cap_is_refused_before_any_charge(harness: Harness) -> None:
    t = harness.add_tenant()
    invoice = await _open_invoice(harness, t)  # (50000 due)
    # A cap set since the invoice was made (invoice.create is held to it too).
    harness.add_tenant(t, limits={"max_payment_amount": {"EUR": 10_000}})
    out = await harness.send("invoice.pay", t, {"invoice_id": invoice})
    assert kind(out) == "command.rejected" and data(out)["reason"] == "quota_exceeded", data(out)
    assert data(out)["limit"] == "max_payment_amount"
    assert await _charges(harness, t) == []


async def test_a_pay_in_a_currency_not_listed_is_refused(harness: Harness) -> None:
    limits = {"max_payment_amount": {"USD": 10**6}, "only_listed_currencies": True}
    t = harness.add_tenant()
    invoice = await _open_invoice(harness, t)
    harness.add_tenant(t, limits=limits)  # (set since: invoice.create is held to it too)
    out = await harness.send("invoice.pay", t, {"invoice_id": invoice})
    assert data(out)["reason"] == "quota_exceeded" and data(out)["limit"] == "currencies"


async def test_a_paid_invoice_counts_toward_the_days_volume_once(harness: Harness) -> None:
    t = harness.add_tenant(limits={"daily_payment_volume": {"EUR": 80_000}})
    first, second = await _open_invoice(harness, t), await _open_invoice(harness, t)
    paid = await harness.send("invoice.pay", t, {"invoice_id": first}, command_id="p1")
    assert kind(paid) == "invoice.paid", data(paid)
    again = await harness.send("invoice.pay", t, {"invoice_id": first}, command_id="p1")
    assert kind(again) == "invoice.paid"  # (a redelivery: counted once)
    volume = harness.processor.limits.table[f"{t}:limits"]["volume"]
    assert volume == {"EUR": 50_000}, volume
    over = await harness.send("invoice.pay", t, {"invoice_id": second})
    assert data(over)["reason"] == "quota_exceeded", data(over)
    assert data(over)["limit"] == "daily_payment_volume"
    assert len(await _charges(harness, t)) == 1


async def test_a_declined_pay_counts_nothing_toward_the_day(harness: Harness) -> None:
    t = harness.add_tenant(limits={"daily_payment_volume": {"EUR": 80_000}})
    invoice = await _open_invoice(harness, t, token="pm_card_chargeCustomerFail")
    failed = await harness.send("invoice.pay", t, {"invoice_id": invoice})
    assert kind(failed) == "invoice.payment_failed", data(failed)
    state = harness.processor.limits.table[f"{t}:limits"]
    assert not (state.get("volume") or {}).get("EUR") and not state.get("held")


async def test_a_parked_pays_hold_is_released_once_it_is_answered(harness: Harness) -> None:
    """A pay parked after its provider charged (answers lost), its invoice read back paid
    by invoice.refresh, then re-driven: refused "already paid", and the 50000 its first
    delivery held against the day is released (its re-drive is admitted as an
    InvoiceCharge of 0, the invoice no longer open: review h78o M1)."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(
        t,
        limits={"daily_payment_volume": {"EUR": 80_000}},
        gateway_options={"lose_response_first": {f"ps:{t}:pay-1": 3}},
    )
    invoice = await _open_invoice(h, t)
    pay = {"invoice_id": invoice}
    parked = await h.processor.process(_command(t, "invoice.pay", pay, "pay-1"))
    assert [e.topic for e in parked] == [h.settings.retry_topic]
    assert h.processor.limits.table[f"{t}:limits"]["held"]
    assert kind(await h.send("invoice.refresh", t, pay)) == "invoice.paid"
    redriven = await _answer(h, _command(t, "invoice.pay", pay, "pay-1"))
    assert "already paid" in _rejected(redriven, "invalid_state")
    assert not h.processor.limits.table[f"{t}:limits"]["held"]
    assert len(await _charges(h, t)) == 1


async def test_a_paid_invoices_void_names_no_command_that_cannot_refund_it(
    harness: Harness,
) -> None:
    """refund.create takes a paystream payment; an invoice's payment is its provider's
    (review h78o L2): the refusal does not send the tenant there."""
    t = harness.add_tenant()
    invoice = await _open_invoice(harness, t)
    await _made(harness, t, "invoice.pay", {"invoice_id": invoice})
    message = _rejected(
        await harness.send("invoice.void", t, {"invoice_id": invoice}), "invalid_state"
    )
    assert "refund its payment at its provider" in message and "refund.create" not in message


async def _parked_pay_read_paid(h: Harness, t: str) -> tuple[str, Any]:
    """An invoice of 50000 EUR whose pay (command pay-1) charged and was parked (its
    answers lost), then read back paid by an invoice.refresh (a record of its own, kept
    to deliver again): the invoice and that record."""
    invoice = await _open_invoice(h, t)
    pay = {"invoice_id": invoice}
    parked = await h.processor.process(_command(t, "invoice.pay", pay, "pay-1"))
    assert [e.topic for e in parked] == [h.settings.retry_topic]
    refresh = _command(t, "invoice.refresh", pay, "refresh-1")
    assert kind(await _answer(h, refresh)) == "invoice.paid"
    return invoice, refresh


async def test_an_invoice_read_back_paid_counts_toward_the_day_once(harness: Harness) -> None:
    """A pay parked after its provider charged, its invoice then read paid by
    invoice.refresh: that charge counts toward the day's volume (review h78o M1b), once,
    whether the refresh is delivered again or the pay re-driven; its hold goes as it is
    counted (not held and counted both)."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(
        t,
        limits={"daily_payment_volume": {"EUR": 80_000}},
        gateway_options={"lose_response_first": {f"ps:{t}:pay-1": 3}},
    )
    invoice, refresh = await _parked_pay_read_paid(h, t)
    state = h.processor.limits.table[f"{t}:limits"]
    assert state["volume"] == {"EUR": 50_000} and not state["held"], state
    await h.processor.process(refresh)  # (redelivered: a crash before its commit)
    redriven = await _answer(h, _command(t, "invoice.pay", {"invoice_id": invoice}, "pay-1"))
    assert "already paid" in _rejected(redriven, "invalid_state")
    state = h.processor.limits.table[f"{t}:limits"]
    assert state["volume"] == {"EUR": 50_000} and not state["held"], state
    # (another 50000 would take the day to 100000: over 80000)
    over = await harness.send("invoice.pay", t, {"invoice_id": await _open_invoice(h, t)})
    assert data(over)["reason"] == "quota_exceeded", data(over)
    assert data(over)["limit"] == "daily_payment_volume"
    assert len(await _charges(h, t)) == 1


async def test_an_invoice_paid_on_its_providers_page_counts_toward_the_day(
    harness: Harness,
) -> None:
    """A sent invoice (send_invoice) paid by its customer at the provider, read back by
    invoice.refresh: counted toward the day's volume, as paystream learnt of its charge."""
    h = harness
    t = h.add_tenant(limits={"daily_payment_volume": {"EUR": 80_000}})
    invoice = await _open_invoice(h, t)
    provider_invoice = h.processor.tables.invoices[f"{t}:{invoice}"]["provider_invoice_id"]
    await simulator_of(h, t).pay_invoice(
        gw.PayInvoice(provider_invoice_id=provider_invoice, provider_payment_method_id=None),
        idempotency_key="paid-on-its-page",
    )
    assert kind(await h.send("invoice.refresh", t, {"invoice_id": invoice})) == "invoice.paid"
    assert h.processor.limits.table[f"{t}:limits"]["volume"] == {"EUR": 50_000}


async def _credited_draft(h: Harness, t: str, credit: int) -> dict[str, Any]:
    """A draft of 50000 EUR whose customer holds ``credit`` EUR on their balance at the
    provider (the seller's dashboard: the simulator's credit_customer)."""
    draft = await _draft(h, t)
    customer = h.processor.tables.customers[f"{t}:{draft['customer_id']}"]
    await simulator_of(h, t).credit_customer(
        customer["provider_customer_id"], Money(amount=credit, currency="EUR")
    )
    return draft


async def test_an_invoice_its_customers_credit_covers_is_paid_as_it_is_finalized(
    harness: Harness,
) -> None:
    """Finalized with nothing left to charge (its customer's credit balance covers it),
    the invoice is paid at once, as at Stripe: answered invoice.paid, not
    invoice.finalized (review L1), nothing charged; a pay of it is refused."""
    h = harness
    t = h.add_tenant(limits={"daily_payment_volume": {"EUR": 80_000}})
    draft = await _credited_draft(h, t, 60_000)
    out = await h.send("invoice.finalize", t, {"invoice_id": draft["id"]})
    assert kind(out) == "invoice.paid", data(out)
    assert data(out)["previous_status"] == "draft"
    obj = data(out)["object"]
    assert (obj["status"], obj["amount"], obj["currency"]) == ("paid", 0, "EUR"), obj
    assert await _charges(h, t) == []
    pay = await h.send("invoice.pay", t, {"invoice_id": draft["id"]})
    assert "already paid" in _rejected(pay, "invalid_state")
    state = h.processor.limits.table[f"{t}:limits"]
    assert not (state.get("volume") or {}).get("EUR") and not state.get("held"), state


async def test_a_credit_that_covers_part_of_an_invoice_lowers_what_its_pay_charges(
    harness: Harness,
) -> None:
    """Credit short of the invoice: finalized open with the rest due, which its pay
    charges and the day's volume counts."""
    h = harness
    t = h.add_tenant(limits={"daily_payment_volume": {"EUR": 80_000}})
    draft = await _credited_draft(h, t, 20_000)
    out = await h.send("invoice.finalize", t, {"invoice_id": draft["id"]})
    assert kind(out) == "invoice.finalized", data(out)
    assert data(out)["object"]["amount"] == 30_000
    paid = await h.send("invoice.pay", t, {"invoice_id": draft["id"]})
    assert kind(paid) == "invoice.paid", data(paid)
    assert [c.amount for c in await _charges(h, t)] == [30_000]
    assert h.processor.limits.table[f"{t}:limits"]["volume"] == {"EUR": 30_000}


@pytest.mark.parametrize("credited", [True, False])
async def test_a_finalize_re_driven_after_its_invoice_was_read_paid_is_refused(
    harness: Harness, credited: bool
) -> None:
    """A finalize parked (its answers lost: its provider finalized the invoice, paid at
    once by its customer's credit, or open and paid since on the provider's page), the
    invoice then read paid by invoice.refresh (invoice.paid, once). Re-driven, the
    finalize is refused invalid_state: the provider's replay of it would answer
    invoice.paid a second time (credited), or an open invoice that cannot be recorded
    over a paid one, parking it again on every re-drive (review h79r_c)."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:fin-1": 3}})
    draft = await _credited_draft(h, t, 60_000) if credited else await _draft(h, t)
    body = {"invoice_id": draft["id"]}
    parked = await h.processor.process(_command(t, "invoice.finalize", body, "fin-1"))
    assert [e.topic for e in parked] == [h.settings.retry_topic]
    if not credited:
        provider_invoice = h.processor.tables.invoices[f"{t}:{draft['id']}"]
        await simulator_of(h, t).pay_invoice(
            gw.PayInvoice(
                provider_invoice_id=provider_invoice["provider_invoice_id"],
                provider_payment_method_id=None,
            ),
            idempotency_key="paid-on-its-page",
        )
    read = await _answer(h, _command(t, "invoice.refresh", body, "refresh-1"))
    assert kind(read) == "invoice.paid", data(read)
    redriven = await h.processor.process(_command(t, "invoice.finalize", body, "fin-1"))
    out = outcome_of(h.settings, redriven)
    assert out is not None, [e.topic for e in redriven]
    assert "is paid" in _rejected(out, "invalid_state")


async def test_a_refresh_sent_again_past_the_window_counts_its_paid_invoice_once(
    harness: Harness,
) -> None:
    """An invoice paid on the provider's page, read back paid by invoice.refresh
    (counted toward the day); the same refresh sent again past the idempotency window
    (a provider's webhook resent days later brings the same command id) is answered from
    the invoice, its first outcome, and counts nothing again (review h79r_c F2)."""
    h = harness
    t = h.add_tenant(limits={"daily_payment_volume": {"EUR": 200_000}})
    invoice = await _open_invoice(h, t)
    provider_invoice = h.processor.tables.invoices[f"{t}:{invoice}"]["provider_invoice_id"]
    await simulator_of(h, t).pay_invoice(
        gw.PayInvoice(provider_invoice_id=provider_invoice, provider_payment_method_id=None),
        idempotency_key="paid-on-its-page",
    )
    body = {"invoice_id": invoice}
    first = await _answer(h, _command(t, "invoice.refresh", body, "refresh-1"))
    assert kind(first) == "invoice.paid", data(first)
    assert h.processor.limits.table[f"{t}:limits"]["volume"] == {"EUR": 50_000}
    del h.idempotency[f"{t}:refresh-1"]  # the idempotency window passed
    again = await _answer(h, _command(t, "invoice.refresh", body, "refresh-1"))
    assert again.get_id() == first.get_id()  # (its first outcome, from the invoice)
    assert h.processor.limits.table[f"{t}:limits"]["volume"] == {"EUR": 50_000}


async def test_a_refresh_redelivered_after_a_crash_lost_its_count_counts_it(
    harness: Harness,
) -> None:
    """The refresh that read the invoice paid, redelivered after a crash kept its invoice
    write but lost its limits and idempotency writes: answered from the invoice, and
    counted then (not never)."""
    h = harness
    t = h.add_tenant(limits={"daily_payment_volume": {"EUR": 200_000}})
    invoice = await _open_invoice(h, t)
    provider_invoice = h.processor.tables.invoices[f"{t}:{invoice}"]["provider_invoice_id"]
    await simulator_of(h, t).pay_invoice(
        gw.PayInvoice(provider_invoice_id=provider_invoice, provider_payment_method_id=None),
        idempotency_key="paid-on-its-page",
    )
    before = copy.deepcopy(h.processor.limits.table[f"{t}:limits"])
    refresh = _command(t, "invoice.refresh", {"invoice_id": invoice}, "refresh-1")
    first = await _answer(h, refresh)
    assert kind(first) == "invoice.paid", data(first)
    h.processor.limits.table[f"{t}:limits"] = before  # (the crash: lost)
    del h.idempotency[f"{t}:refresh-1"]  # (lost too)
    again = await _answer(h, refresh)  # the same record, redelivered
    assert again.get_id() == first.get_id()
    assert h.processor.limits.table[f"{t}:limits"]["volume"] == {"EUR": 50_000}


async def test_a_sent_draft_whose_customer_was_deleted_is_still_finalized(
    harness: Harness,
) -> None:
    """The customer's credit is read as a draft is finalized: a customer deleted since
    has none to apply, and the finalize opens the invoice as it did before credit was
    modelled (it was refused not_found: no such customer)."""
    h = harness
    t = h.add_tenant()
    draft = await _draft(h, t, collection_method="send_invoice", days_until_due=7)
    await _made(h, t, "customer.delete", {"customer_id": draft["customer_id"]})
    out = await h.send("invoice.finalize", t, {"invoice_id": draft["id"]})
    assert kind(out) == "invoice.finalized", data(out)


async def test_a_pay_that_pays_an_invoice_releases_the_hold_of_another_parked_pay_of_it(
    harness: Harness,
) -> None:
    """A pay parked before its provider saw it (holding the invoice's amount against the
    day); the invoice then paid by another pay, counted: the parked pay can charge
    nothing now (re-driven, it is refused "already paid"), and its hold goes as the
    other is counted, not held beside it until its re-drive or for two days (review
    h79r_c F6)."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(
        t,
        limits={"daily_payment_volume": {"EUR": 120_000}},
        gateway_options={"fail_first": {f"ps:{t}:pay-1": 3}},
    )
    invoice = await _open_invoice(h, t)
    body = {"invoice_id": invoice}
    parked = await h.processor.process(_command(t, "invoice.pay", body, "pay-1"))
    assert [e.topic for e in parked] == [h.settings.retry_topic]
    assert len(h.processor.limits.table[f"{t}:limits"]["held"]) == 1
    paid = await _answer(h, _command(t, "invoice.pay", body, "pay-2"))
    assert kind(paid) == "invoice.paid", data(paid)
    state = h.processor.limits.table[f"{t}:limits"]
    assert state["volume"] == {"EUR": 50_000} and not state["held"], state
    # (another 50000 fits the day: 100000 of 120000, none held)
    other = await h.send("invoice.pay", t, {"invoice_id": await _open_invoice(h, t)})
    assert kind(other) == "invoice.paid", data(other)
    redriven = await _answer(h, _command(t, "invoice.pay", body, "pay-1"))
    assert "already paid" in _rejected(redriven, "invalid_state")
    state = h.processor.limits.table[f"{t}:limits"]
    assert state["volume"] == {"EUR": 100_000} and not state["held"], state
    assert len(await _charges(h, t)) == 2


async def test_every_worded_refusal_is_one_a_command_reaches(harness: Harness) -> None:
    """Each (command, status) given words of what to do instead is refused so through the
    pipeline, and the words are the ones the tenant reads; none is worded that no command
    reaches (a refresh of a paid or void invoice is answered from its record)."""
    from paystream.tables.state_machines import _INVOICE_INSTEAD

    t = harness.add_tenant()
    reached: dict[tuple[str, str], str] = {}

    async def refused(verb: str, invoice_id: str, status: str, **body: Any) -> None:
        out = await harness.send(f"invoice.{verb}", t, {"invoice_id": invoice_id, **body})
        message = _rejected(out, "invalid_state")
        what = verb.replace("_", " ")
        words = f"cannot {what} an invoice that is {status}{_INVOICE_INSTEAD[verb, status]}"
        assert message == f"invoice {invoice_id}: {words}", message
        reached[verb, status] = message

    async def moved(verb: str, invoice_id: str) -> None:
        out = await harness.send(f"invoice.{verb}", t, {"invoice_id": invoice_id})
        assert not kind(out).endswith("rejected"), data(out)

    a = (await _draft(harness, t))["id"]
    await refused("pay", a, "draft")
    await refused("mark_uncollectible", a, "draft")
    await moved("finalize", a)
    await refused("finalize", a, "open")
    await refused("update", a, "open", description="x")
    await moved("mark_uncollectible", a)
    await refused("mark_uncollectible", a, "uncollectible")
    await refused("finalize", a, "uncollectible")
    await refused("update", a, "uncollectible", description="x")
    await moved("pay", a)
    await refused("update", a, "paid", description="x")
    await refused("void", a, "paid")
    b = (await _draft(harness, t))["id"]
    await moved("void", b)
    await refused("update", b, "void", description="x")
    assert set(reached) == set(_INVOICE_INSTEAD)
    # A refresh of either is answered from its record, never refused.
    for invoice_id in (a, b):
        read = await harness.send("invoice.refresh", t, {"invoice_id": invoice_id})
        assert kind(read) == "invoice.updated", data(read)
