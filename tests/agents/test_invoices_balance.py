"""A one-off invoice and its customer's balance at the provider, on the real simulator,
through the pipeline, as Stripe's Invoices API has it (review h79r_c F3, F4, F7, F8):

* what is left due after the balance is applied, under the currency's minimum charge,
  is not charged: the invoice is paid as it is finalized (answered `invoice.paid`) and
  what was left is added to the customer's balance as a debit their next invoice bills;
* an invoice voided gives back the balance its finalize applied to it;
* an invoice learnt void releases the limits' holds of its pays, parked;
* the simulator's effect ledger says a finalize paid by the balance paid the invoice."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways import base as gw
from paystream.money import Money
from tests.agents.harness import Harness, data, kind, new_tenant_id, simulator_of
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio

LINES = [
    {"description": "Consulting, hours", "amount": 15000, "quantity": 3},
    {"description": "Setup fee", "amount": 5000},
]  # fmt: skip  (50000 EUR)


async def _made(h: Harness, t: str, command_type: str, body: dict[str, Any]) -> dict[str, Any]:
    out = await h.send(command_type, t, body)
    assert not kind(out).endswith("rejected"), data(out)
    return dict(data(out)["object"])


async def _customer(h: Harness, t: str) -> tuple[str, str, str]:
    """A customer with a saved card: (its id, its provider's id, the card's id)."""
    cus = await _made(h, t, "customer.create", {"email": "a@example.com"})
    pm = await _made(
        h, t, "payment_method.attach", {"customer_id": cus["id"], "token": "pm_card_visa"}
    )
    return cus["id"], cus["provider_customer_id"], pm["id"]


async def _draft(h: Harness, t: str, customer: tuple[str, str, str]) -> str:
    body = {"customer_id": customer[0], "payment_method_id": customer[2], "currency": "EUR",
            "line_items": LINES}  # fmt: skip
    return str((await _made(h, t, "invoice.create", body))["id"])


async def _credit(h: Harness, t: str, customer: tuple[str, str, str], amount: int) -> None:
    await simulator_of(h, t).credit_customer(customer[1], Money(amount=amount, currency="EUR"))


async def _balance(h: Harness, t: str, customer: tuple[str, str, str]) -> int:
    return await simulator_of(h, t).customer_credit(customer[1], "EUR")


async def _charges(h: Harness, t: str) -> list[int]:
    return [e.amount or 0 for e in await simulator_of(h, t).effects() if e.kind == "charge"]


def _state(h: Harness, t: str) -> dict[str, Any]:
    return dict(h.processor.limits.table[f"{t}:limits"])


# ---- F3: under the minimum charge ------------------------------------------------------


async def test_a_balance_leaving_less_than_the_minimum_charge_pays_the_invoice_at_finalize(
    harness: Harness,
) -> None:
    """Credit of 499.80 on an invoice of 500.00 leaves 0.20 due, under EUR's minimum
    charge (0.50): Stripe marks the invoice paid as it is finalized, charging nothing, and
    adds the 0.20 to the customer's balance, a debit their next invoice bills. paystream
    answers invoice.paid (amount 0), counts nothing toward the day, and the next
    invoice's pay charges 500.20."""
    h = harness
    t = h.add_tenant(limits={"daily_payment_volume": {"EUR": 200_000}})
    customer = await _customer(h, t)
    first = await _draft(h, t, customer)
    await _credit(h, t, customer, 49_980)
    out = await h.send("invoice.finalize", t, {"invoice_id": first})
    assert kind(out) == "invoice.paid", data(out)
    obj = data(out)["object"]
    assert (obj["status"], obj["amount"], data(out)["previous_status"]) == ("paid", 0, "draft")
    assert await _charges(h, t) == []
    assert await _balance(h, t, customer) == -20  # (the debit carried)
    pay = await h.send("invoice.pay", t, {"invoice_id": first})
    assert kind(pay) == "command.rejected" and "already paid" in data(pay)["message"]
    assert not (_state(h, t).get("volume") or {}).get("EUR")
    second = await _draft(h, t, customer)
    opened = await _made(h, t, "invoice.finalize", {"invoice_id": second})
    assert (opened["status"], opened["amount"]) == ("open", 50_020), opened
    assert await _balance(h, t, customer) == 0
    paid = await h.send("invoice.pay", t, {"invoice_id": second})
    assert kind(paid) == "invoice.paid", data(paid)
    assert await _charges(h, t) == [50_020]
    assert _state(h, t)["volume"] == {"EUR": 50_020}


async def test_a_balance_leaving_the_minimum_charge_due_opens_the_invoice(
    harness: Harness,
) -> None:
    """(0.50 left: EUR's minimum exactly, chargeable: finalized open, 0.50 charged.)"""
    h = harness
    t = h.add_tenant()
    customer = await _customer(h, t)
    invoice = await _draft(h, t, customer)
    await _credit(h, t, customer, 49_950)
    out = await h.send("invoice.finalize", t, {"invoice_id": invoice})
    assert kind(out) == "invoice.finalized", data(out)
    assert data(out)["object"]["amount"] == 50
    assert await _balance(h, t, customer) == 0
    assert kind(await h.send("invoice.pay", t, {"invoice_id": invoice})) == "invoice.paid"
    assert await _charges(h, t) == [50]


# ---- F4: void gives the balance back ---------------------------------------------------


async def test_voiding_an_invoice_gives_back_the_credit_its_finalize_applied(
    harness: Harness,
) -> None:
    """Credit of 200.00 applied to an invoice of 500.00 as it is finalized (300.00 left
    due); the invoice voided: the 200.00 is the customer's again (Stripe returns a
    balance applied to an invoice it voids), and their next invoice takes it."""
    h = harness
    t = h.add_tenant()
    customer = await _customer(h, t)
    invoice = await _draft(h, t, customer)
    await _credit(h, t, customer, 20_000)
    opened = await _made(h, t, "invoice.finalize", {"invoice_id": invoice})
    assert opened["amount"] == 30_000 and await _balance(h, t, customer) == 0
    voided = await h.send("invoice.void", t, {"invoice_id": invoice})
    assert kind(voided) == "invoice.voided", data(voided)
    assert await _balance(h, t, customer) == 20_000
    again = await h.send("invoice.void", t, {"invoice_id": invoice})  # (refused: void)
    assert kind(again) == "command.rejected"
    assert await _balance(h, t, customer) == 20_000  # (given back once)
    following = await _draft(h, t, customer)
    reopened = await _made(h, t, "invoice.finalize", {"invoice_id": following})
    assert reopened["amount"] == 30_000 and await _balance(h, t, customer) == 0


async def test_voiding_an_invoice_gives_back_the_debit_its_finalize_applied(
    harness: Harness,
) -> None:
    """A debit (0.20 carried from an invoice under the minimum charge) billed on the next
    invoice, which is voided: the customer owes the 0.20 again (Stripe debits it back)."""
    h = harness
    t = h.add_tenant()
    customer = await _customer(h, t)
    first = await _draft(h, t, customer)
    await _credit(h, t, customer, 49_980)
    assert kind(await h.send("invoice.finalize", t, {"invoice_id": first})) == "invoice.paid"
    second = await _draft(h, t, customer)
    opened = await _made(h, t, "invoice.finalize", {"invoice_id": second})
    assert opened["amount"] == 50_020 and await _balance(h, t, customer) == 0
    await _made(h, t, "invoice.void", {"invoice_id": second})
    assert await _balance(h, t, customer) == -20
    assert await _charges(h, t) == []


# ---- F7: a void releases its parked pays' holds ----------------------------------------


async def _parked_pay(h: Harness, t: str, volume: int) -> tuple[str, str]:
    """A tenant (``volume`` EUR a day) with two open invoices of 500.00, each with a pay
    parked before its provider saw it (holding 500.00 against the day): the first
    invoice's id and its provider's."""
    h.add_tenant(
        t,
        limits={"daily_payment_volume": {"EUR": volume}},
        gateway_options={"fail_first": {f"ps:{t}:pay-1": 3, f"ps:{t}:pay-2": 3}},
    )
    customer = await _customer(h, t)
    ids = []
    for command_id in ("pay-1", "pay-2"):
        invoice = await _draft(h, t, customer)
        await _made(h, t, "invoice.finalize", {"invoice_id": invoice})
        body = {"invoice_id": invoice}
        parked = await h.processor.process(_command(t, "invoice.pay", body, command_id))
        assert [e.topic for e in parked] == [h.settings.retry_topic]
        ids.append(invoice)
    assert len(_state(h, t)["held"]) == 2
    provider = h.processor.tables.invoices[f"{t}:{ids[0]}"]["provider_invoice_id"]
    return ids[0], str(provider)


@pytest.mark.parametrize("learnt_by", ["invoice.void", "invoice.refresh"])
async def test_an_invoice_learnt_void_releases_the_hold_of_its_parked_pay(
    harness: Harness, learnt_by: str
) -> None:
    """A pay parked before its provider saw it holds 500.00 against the day; its invoice
    then voided (by invoice.void, or at the provider and read back by invoice.refresh):
    nothing will be collected on it, so the hold goes then, once (the command delivered
    again releases nothing more: the other invoice's parked pay keeps its hold), not
    held until the pay is re-driven or for two days (review h79r_c F7)."""
    h = harness
    t = new_tenant_id()
    invoice, provider = await _parked_pay(h, t, 120_000)
    body = {"invoice_id": invoice}
    if learnt_by == "invoice.refresh":
        await simulator_of(h, t).void_invoice(
            gw.VoidInvoice(provider_invoice_id=provider), idempotency_key="voided-at-provider"
        )
    learnt = _command(t, learnt_by, body, "learnt-1")
    out = await _answer(h, learnt)
    assert kind(out) == "invoice.voided", data(out)
    held = _state(h, t)["held"]
    assert len(held) == 1 and [h_[2] for h_ in held.values()] == [50_000], held
    await h.processor.process(learnt)  # (redelivered: a crash before its commit)
    assert _state(h, t)["held"] == held
    redriven = await _answer(h, _command(t, "invoice.pay", body, "pay-1"))
    assert kind(redriven) == "command.rejected" and "void" in data(redriven)["message"]
    assert _state(h, t)["held"] == held and not _state(h, t).get("volume", {}).get("EUR")
    assert await _charges(h, t) == []


async def test_a_void_redelivered_after_its_limits_write_was_lost_releases_the_hold(
    harness: Harness,
) -> None:
    """The void's limits write lost in a crash (its answer kept): redelivered, answered
    from its idempotency record, and the parked pay's hold goes then."""
    h = harness
    t = new_tenant_id()
    invoice, _ = await _parked_pay(h, t, 120_000)
    before = dict(_state(h, t))
    void = _command(t, "invoice.void", {"invoice_id": invoice}, "void-1")
    assert kind(await _answer(h, void)) == "invoice.voided"
    h.processor.limits.table[f"{t}:limits"] = before  # (the crash: lost)
    await h.processor.process(void)
    assert len(_state(h, t)["held"]) == 1


@pytest.mark.parametrize("learnt_by", ["paid", "void"])
async def test_a_hold_placed_before_holds_named_their_invoice_is_found_by_its_request(
    harness: Harness, learnt_by: str
) -> None:
    """A pay's hold as a version before holds named their invoice placed it (four
    elements: its day, currency, amount and the request that placed it). The invoice
    learnt paid (read back by invoice.refresh) or void: that hold is found by its request
    (a pay of this invoice) and goes, as a hold naming it does; the other invoice's
    pay's hold, of the same amount, stays (review h79r_c F7)."""
    h = harness
    t = new_tenant_id()
    invoice, provider = await _parked_pay(h, t, 200_000)
    state = _state(h, t)
    state["held"] = {tag: hold[:4] for tag, hold in state["held"].items()}  # (as placed then)
    h.processor.limits.table[f"{t}:limits"] = state
    sim = simulator_of(h, t)
    if learnt_by == "paid":
        await sim.pay_invoice(
            gw.PayInvoice(provider_invoice_id=provider, provider_payment_method_id=None),
            idempotency_key="paid-on-its-page",
        )
        out = await _answer(h, _command(t, "invoice.refresh", {"invoice_id": invoice}, "r-1"))
        assert kind(out) == "invoice.paid", data(out)
    else:
        out = await _answer(h, _command(t, "invoice.void", {"invoice_id": invoice}, "v-1"))
        assert kind(out) == "invoice.voided", data(out)
    held = _state(h, t)["held"]
    assert [hold[2] for hold in held.values()] == [50_000], held  # (the other's only)
    counted = 50_000 if learnt_by == "paid" else 0
    assert (_state(h, t).get("volume") or {}).get("EUR", 0) == counted


# ---- F8: the effect ledger -------------------------------------------------------------


async def test_the_effect_ledger_records_a_finalize_paid_by_credit_as_a_payment(
    harness: Harness,
) -> None:
    """A finalize its customer's credit paid records invoice.paid after invoice.finalized
    under its key (an effect-ledger check can tell it from a finalize left open, which
    records invoice.finalized alone)."""
    h = harness
    t = h.add_tenant()
    customer = await _customer(h, t)
    paid, left_open = await _draft(h, t, customer), await _draft(h, t, customer)
    await _credit(h, t, customer, 50_000)
    for invoice, command_id in ((paid, "fin-paid"), (left_open, "fin-open")):
        await h.send("invoice.finalize", t, {"invoice_id": invoice}, command_id=command_id)
    effects = await simulator_of(h, t).effects()
    kinds = {
        command_id: [e.kind for e in effects if e.idempotency_key.endswith(f":{command_id}")]
        for command_id in ("fin-paid", "fin-open")
    }
    assert kinds == {
        "fin-paid": ["invoice.finalized", "invoice.paid"],
        "fin-open": ["invoice.finalized"],
    }, kinds
