"""invoice.update through the pipeline, on the real simulator: a draft's lines replaced
whole (its new total, with its tax rates), its description, a sent one's days_until_due,
its metadata merged; only a draft (an open, paid or void one refused before the provider
is asked); validated as invoice.create's lines; held to the tenant's cap and listed
currencies at its new total; once per key in the simulator's effect ledger, however it
is redelivered or re-driven; another tenant's invoice not found; Square and Paddle have
none."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways import base as gw
from paystream.gateways.errors import UnsupportedOperation
from paystream.gateways.paddle.gateway import PADDLE_CAPABILITIES
from paystream.gateways.square.gateway import SQUARE_CAPABILITIES
from paystream.streams.commands import COMMANDS, PROVIDER_READS
from tests.agents.harness import Harness, data, kind, simulator_of
from tests.agents.test_invoices import _charges, _customer_with, _draft, _made, _rejected
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio

NEW_LINES = [
    {"description": "Design, hours", "amount": 12000, "quantity": 2},
    {"description": "Travel", "amount": 3500},
]
NEW_TOTAL = 27500  # (LINES' was 50000)


async def _effects(h: Harness, t: str, kind_: str = "invoice.updated") -> list[Any]:
    return [e for e in await simulator_of(h, t).effects() if e.kind == kind_]


async def _at_provider(h: Harness, t: str, invoice: str) -> dict[str, Any]:
    provider_invoice = h.processor.tables.invoices[f"{t}:{invoice}"]["provider_invoice_id"]
    stored = await simulator_of(h, t)._store.read(provider_invoice)
    assert stored is not None
    return dict(stored)


async def test_the_command_is_registered() -> None:
    assert "invoice.update" in COMMANDS
    assert "invoice.update" not in PROVIDER_READS
    assert gw.OPERATION_CAPABILITY["update_invoice"] is gw.Capability.INVOICES
    # (a change of a draft needs the tenant's invoices, as a finalize does)
    assert "update_invoice" not in gw.UNNARROWED_OPERATIONS


async def test_a_drafts_lines_are_replaced_and_its_new_total_charged(harness: Harness) -> None:
    t = harness.add_tenant()
    draft = await _draft(harness, t, metadata={"order": "o-1", "team": "red"})
    assert draft["amount"] == 50000
    body = {"invoice_id": draft["id"], "line_items": NEW_LINES, "description": "March",
            "metadata": {"team": "", "po": "p-9"}}  # fmt: skip
    out = await harness.send("invoice.update", t, body)
    assert kind(out) == "invoice.updated", data(out)
    obj = data(out)["object"]
    assert data(out)["previous_status"] == "draft"
    assert obj["status"] == "draft" and obj["amount"] == NEW_TOTAL
    assert obj["line_items"] == [
        {"description": "Design, hours", "amount": 12000, "quantity": 2},
        {"description": "Travel", "amount": 3500, "quantity": 1},
    ]
    assert obj["description"] == "March"
    assert obj["metadata"] == {"order": "o-1", "po": "p-9"}  # (merged; "" removed)
    stored = harness.processor.tables.invoices[f"{t}:{draft['id']}"]
    assert stored["amount"] == NEW_TOTAL and stored["description"] == "March"
    held = await _at_provider(harness, t, draft["id"])
    assert [line["unit_amount"] for line in held["lines"]] == [12000, 3500]
    assert held["metadata"] == {"order": "o-1", "po": "p-9"}
    assert len(await _effects(harness, t)) == 1
    await _made(harness, t, "invoice.finalize", {"invoice_id": draft["id"]})
    paid = await harness.send("invoice.pay", t, {"invoice_id": draft["id"]})
    assert kind(paid) == "invoice.paid" and data(paid)["object"]["amount"] == NEW_TOTAL
    (charge,) = await _charges(harness, t)
    assert charge.amount == NEW_TOTAL


async def test_fields_alone_keep_the_lines(harness: Harness) -> None:
    t = harness.add_tenant()
    cus, _ = await _customer_with(harness, t)
    fee = [{"description": "Fee", "amount": 9000}]
    body = {"customer_id": cus, "currency": "EUR", "collection_method": "send_invoice",
            "days_until_due": 30, "line_items": fee}  # fmt: skip
    sent = await _made(harness, t, "invoice.create", body)
    out = await harness.send("invoice.update", t, {"invoice_id": sent["id"], "days_until_due": 7})
    assert kind(out) == "invoice.updated", data(out)
    assert data(out)["object"]["days_until_due"] == 7 and data(out)["object"]["amount"] == 9000
    assert (await _at_provider(harness, t, sent["id"]))["days_until_due"] == 7
    opened = await _made(harness, t, "invoice.finalize", {"invoice_id": sent["id"]})
    assert opened["due_date"] is not None


async def test_a_taxed_drafts_new_total_carries_its_tax(harness: Harness) -> None:
    t = harness.add_tenant()
    rate = {"display_name": "VAT", "percentage": "20", "inclusive": False, "country": "FR"}
    await _made(harness, t, "tax_rate.create", {**rate, "tax_rate_id": "vat"})
    draft = await _draft(harness, t, tax_rate_ids=["vat"])
    out = await harness.send(
        "invoice.update", t, {"invoice_id": draft["id"], "line_items": NEW_LINES}
    )
    obj = data(out)["object"]
    assert (obj["subtotal"], obj["tax"], obj["total"], obj["amount"]) == (27500, 5500, 33000, 33000)


async def test_only_a_draft_is_updated(harness: Harness) -> None:
    t = harness.add_tenant()
    opened = await _draft(harness, t)
    await _made(harness, t, "invoice.finalize", {"invoice_id": opened["id"]})
    paid = await _draft(harness, t)
    await _made(harness, t, "invoice.finalize", {"invoice_id": paid["id"]})
    await _made(harness, t, "invoice.pay", {"invoice_id": paid["id"]})
    voided = await _draft(harness, t)
    await _made(harness, t, "invoice.void", {"invoice_id": voided["id"]})
    for invoice, status in ((opened, "open"), (paid, "paid"), (voided, "void")):
        out = await harness.send("invoice.update", t, {"invoice_id": invoice["id"],
                                                       "line_items": NEW_LINES})  # fmt: skip
        message = _rejected(out, "invalid_state")
        assert f"cannot update an invoice that is {status}" in message, message
    assert await _effects(harness, t) == []  # (none reached the provider)
    assert harness.processor.tables.invoices[f"{t}:{opened['id']}"]["amount"] == 50000


async def test_its_validation(harness: Harness) -> None:
    t = harness.add_tenant()
    draft = await _draft(harness, t)
    iid = draft["id"]
    nothing = await harness.send("invoice.update", t, {"invoice_id": iid})
    _rejected(nothing, "validation_error")
    assert "nothing to update" in data(nothing)["errors"][0]["msg"]
    for lines in (
        [],
        [{"description": "Free", "amount": 0}],
        [{"description": "Half", "amount": 10.5}],
        [{"description": "Text", "amount": "100"}],
        [{"description": "", "amount": 100}],
        [{"description": "Many", "amount": 100, "quantity": 0}],
        [{"description": "Huge", "amount": 10**12, "quantity": 1_000_000}],
    ):
        out = await harness.send("invoice.update", t, {"invoice_id": iid, "line_items": lines})
        _rejected(out, "validation_error")
    # days_until_due is a sent invoice's: this one is charged automatically.
    out = await harness.send("invoice.update", t, {"invoice_id": iid, "days_until_due": 5})
    assert "send_invoice" in _rejected(out, "validation_error")
    # Under the currency's minimum charge: Stripe could not charge it (the simulator's rule).
    tiny = await harness.send(
        "invoice.update", t, {"invoice_id": iid, "line_items": [{"description": "x", "amount": 1}]}
    )
    assert kind(tiny) == "command.rejected", data(tiny)
    assert await _effects(harness, t) == []
    assert harness.processor.tables.invoices[f"{t}:{iid}"]["amount"] == 50000


async def test_its_new_total_is_held_to_the_tenants_limits(harness: Harness) -> None:
    t = harness.add_tenant(limits={"max_payment_amount": {"EUR": 60_000}})
    draft = await _draft(harness, t)  # (50000: under the cap)
    over = [{"description": "More hours", "amount": 30000, "quantity": 3}]
    out = await harness.send("invoice.update", t, {"invoice_id": draft["id"], "line_items": over})
    assert kind(out) == "command.rejected" and data(out)["reason"] == "quota_exceeded", data(out)
    assert data(out)["limit"] == "max_payment_amount"
    # With its exclusive tax, as the create's check: 55000 + 20% is over too.
    rate = {"display_name": "VAT", "percentage": "20", "inclusive": False, "country": "FR"}
    await _made(harness, t, "tax_rate.create", {**rate, "tax_rate_id": "vat"})
    taxed = await _draft(harness, t, tax_rate_ids=["vat"], line_items=[
        {"description": "Small", "amount": 10000}])  # fmt: skip
    near = [{"description": "Nearly", "amount": 55000}]
    out = await harness.send("invoice.update", t, {"invoice_id": taxed["id"], "line_items": near})
    assert data(out)["reason"] == "quota_exceeded", data(out)
    # A change of its fields alone is not a price: not checked.
    ok = await harness.send("invoice.update", t, {"invoice_id": draft["id"], "description": "x"})
    assert kind(ok) == "invoice.updated", data(ok)
    # A currency no longer listed (set since the invoice was made): its lines refused.
    harness.add_tenant(
        t, limits={"only_listed_currencies": True, "max_payment_amount": {"USD": 10**6}}
    )
    out = await harness.send(
        "invoice.update", t, {"invoice_id": draft["id"], "line_items": NEW_LINES}
    )
    assert data(out)["reason"] == "quota_exceeded" and data(out)["limit"] == "currencies"
    assert len(await _effects(harness, t)) == 1  # (the description's alone)


async def test_a_redelivered_update_is_answered_from_its_record(harness: Harness) -> None:
    t = harness.add_tenant()
    draft = await _draft(harness, t)
    body = {"invoice_id": draft["id"], "line_items": NEW_LINES}
    command = _command(t, "invoice.update", body, "up-1")
    first = await _answer(harness, command)
    second = await _answer(harness, command)
    assert kind(first) == "invoice.updated", data(first)
    assert second.get_id() == first.get_id()
    assert len(await _effects(harness, t)) == 1
    assert len((await _at_provider(harness, t, draft["id"]))["lines"]) == 2


async def test_an_update_whose_answer_was_lost_sets_its_lines_once(harness: Harness) -> None:
    """The provider replaced the lines, its answer lost (retried under the same key): the
    lines are as asked, once, and the key's effect recorded once."""
    t = harness.add_tenant()
    draft = await _draft(harness, t)
    key = f"ps:{t}:up-lost"
    harness.tenants[t] = {
        **harness.tenants[t],
        "gateway_options": {"lose_response_first": {key: 1}},
    }
    body = {"invoice_id": draft["id"], "line_items": NEW_LINES}
    out = await harness.send("invoice.update", t, body, command_id="up-lost")
    assert kind(out) == "invoice.updated", data(out)
    assert data(out)["object"]["amount"] == NEW_TOTAL
    assert len(await _effects(harness, t)) == 1
    assert len((await _at_provider(harness, t, draft["id"]))["lines"]) == 2
    # Its key sent again (a re-drive's): the same answer, no second effect.
    provider_invoice = harness.processor.tables.invoices[f"{t}:{draft['id']}"][
        "provider_invoice_id"
    ]
    again = await simulator_of(harness, t).update_invoice(
        gw.UpdateInvoice(
            provider_invoice_id=provider_invoice,
            currency="EUR",
            lines=tuple(
                gw.InvoiceLine(
                    description=line["description"],
                    unit_amount=line["amount"],
                    quantity=line.get("quantity", 1),
                )
                for line in NEW_LINES
            ),
        ),
        idempotency_key=key,
    )
    assert again.amount.amount == NEW_TOTAL
    assert len(await _effects(harness, t)) == 1


async def test_another_tenants_invoice_is_not_found(harness: Harness) -> None:
    t, u = harness.add_tenant(), harness.add_tenant()
    draft = await _draft(harness, t, invoice_id="mine")
    out = await harness.send("invoice.update", u, {"invoice_id": draft["id"], "description": "x"})
    _rejected(out, "not_found")
    assert await _effects(harness, t) == []


@pytest.mark.parametrize("capabilities", [SQUARE_CAPABILITIES, PADDLE_CAPABILITIES])
async def test_square_and_paddle_lack_it(capabilities: frozenset[gw.Capability]) -> None:
    with pytest.raises(UnsupportedOperation):
        gw.require_operation("update_invoice", capabilities, capabilities, "square")
