"""invoice.mark_uncollectible through the pipeline, on the real simulator: an open
invoice written off (`uncollectible`: Stripe's mark_uncollectible), still payable and
voidable; a draft, paid, void or uncollectible one refused before the provider is asked;
the write-off once per key in the simulator's effect ledger; one written off at the
provider read back by invoice.refresh; Square and Paddle have none."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways import base as gw
from paystream.gateways.errors import UnsupportedOperation
from paystream.gateways.paddle.gateway import PADDLE_CAPABILITIES
from paystream.gateways.square.gateway import SQUARE_CAPABILITIES
from paystream.streams.commands import COMMANDS, PROVIDER_READS
from paystream.tenancy.limits import learnt_void
from tests.agents.harness import Harness, data, kind, simulator_of
from tests.agents.test_invoices import _charges, _draft, _made, _open_invoice, _rejected
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio


async def _written_off(h: Harness, t: str) -> tuple[str, Any]:
    invoice = await _open_invoice(h, t)
    out = await h.send("invoice.mark_uncollectible", t, {"invoice_id": invoice})
    return invoice, out


async def _effects(h: Harness, t: str, kind_: str) -> list[Any]:
    return [e for e in await simulator_of(h, t).effects() if e.kind == kind_]


async def test_the_command_is_registered() -> None:
    assert "invoice.mark_uncollectible" in COMMANDS
    assert "invoice.mark_uncollectible" not in PROVIDER_READS
    assert gw.OPERATION_CAPABILITY["mark_invoice_uncollectible"] is gw.Capability.INVOICES
    assert "mark_invoice_uncollectible" in gw.UNNARROWED_OPERATIONS


async def test_an_open_invoice_is_written_off_once(harness: Harness) -> None:
    t = harness.add_tenant()
    invoice, out = await _written_off(harness, t)
    assert kind(out) == "invoice.marked_uncollectible", data(out)
    assert data(out)["previous_status"] == "open"
    assert data(out)["object"]["status"] == "uncollectible"
    assert harness.processor.tables.invoices[f"{t}:{invoice}"]["status"] == "uncollectible"
    (effect,) = await _effects(harness, t, "invoice.marked_uncollectible")
    # Its key sent again (a redelivery's, a re-drive's): answered from it, no second effect.
    provider_invoice = harness.processor.tables.invoices[f"{t}:{invoice}"]["provider_invoice_id"]
    again = await simulator_of(harness, t).mark_invoice_uncollectible(
        gw.MarkInvoiceUncollectible(provider_invoice_id=provider_invoice),
        idempotency_key=effect.idempotency_key,
    )
    assert again.status is gw.InvoiceStatus.UNCOLLECTIBLE
    assert len(await _effects(harness, t, "invoice.marked_uncollectible")) == 1


async def test_a_write_off_redelivered_is_answered_from_its_record(harness: Harness) -> None:
    t = harness.add_tenant()
    invoice = await _open_invoice(harness, t)
    command = _command(t, "invoice.mark_uncollectible", {"invoice_id": invoice}, "wo-1")
    first = await _answer(harness, command)
    second = await _answer(harness, command)
    assert kind(first) == "invoice.marked_uncollectible", data(first)
    assert second.get_id() == first.get_id()  # (its idempotency record's answer)
    assert len(await _effects(harness, t, "invoice.marked_uncollectible")) == 1


async def test_only_an_open_invoice_is_written_off(harness: Harness) -> None:
    t = harness.add_tenant()
    draft = await _draft(harness, t)
    message = _rejected(
        await harness.send("invoice.mark_uncollectible", t, {"invoice_id": draft["id"]}),
        "invalid_state",
    )
    assert "mark uncollectible an invoice that is draft" in message and "finalize" in message
    invoice, _ = await _written_off(harness, t)
    message = _rejected(
        await harness.send("invoice.mark_uncollectible", t, {"invoice_id": invoice}),
        "invalid_state",
    )
    assert "uncollectible already" in message
    paid = await _open_invoice(harness, t)
    await _made(harness, t, "invoice.pay", {"invoice_id": paid})
    voided = await _open_invoice(harness, t)
    await _made(harness, t, "invoice.void", {"invoice_id": voided})
    for final in (paid, voided):
        out = await harness.send("invoice.mark_uncollectible", t, {"invoice_id": final})
        _rejected(out, "invalid_state")
    # (none of the refused ones reached the provider)
    assert len(await _effects(harness, t, "invoice.marked_uncollectible")) == 1


async def test_an_uncollectible_invoice_can_still_be_paid_and_counts_toward_the_day(
    harness: Harness,
) -> None:
    t = harness.add_tenant(limits={"daily_payment_volume": {"EUR": 80_000}})
    invoice, _ = await _written_off(harness, t)
    paid = await harness.send("invoice.pay", t, {"invoice_id": invoice})
    assert kind(paid) == "invoice.paid", data(paid)
    assert data(paid)["previous_status"] == "uncollectible"
    assert data(paid)["object"]["status"] == "paid"
    assert len(await _charges(harness, t)) == 1
    assert harness.processor.limits.table[f"{t}:limits"]["volume"] == {"EUR": 50_000}
    _rejected(await harness.send("invoice.void", t, {"invoice_id": invoice}), "invalid_state")


async def test_an_uncollectible_invoice_can_still_be_voided(harness: Harness) -> None:
    t = harness.add_tenant()
    invoice, _ = await _written_off(harness, t)
    voided = await harness.send("invoice.void", t, {"invoice_id": invoice})
    assert kind(voided) == "invoice.voided", data(voided)
    assert data(voided)["previous_status"] == "uncollectible"
    _rejected(await harness.send("invoice.pay", t, {"invoice_id": invoice}), "invalid_state")
    assert await _charges(harness, t) == []


async def test_a_write_off_at_the_provider_is_read_back_then_its_payment(
    harness: Harness,
) -> None:
    """Written off in the provider's dashboard: invoice.refresh records it
    (invoice.marked_uncollectible), once; read again unchanged, invoice.updated; then
    paid by its customer on the provider's page: invoice.paid, counted toward the day."""
    h = harness
    t = h.add_tenant(limits={"daily_payment_volume": {"EUR": 80_000}})
    invoice = await _open_invoice(h, t)
    provider_invoice = h.processor.tables.invoices[f"{t}:{invoice}"]["provider_invoice_id"]
    sim = simulator_of(h, t)
    await sim.mark_invoice_uncollectible(
        gw.MarkInvoiceUncollectible(provider_invoice_id=provider_invoice),
        idempotency_key="in-its-dashboard",
    )
    read = await h.send("invoice.refresh", t, {"invoice_id": invoice})
    assert kind(read) == "invoice.marked_uncollectible", data(read)
    assert data(read)["previous_status"] == "open"
    same = await h.send("invoice.refresh", t, {"invoice_id": invoice})
    assert kind(same) == "invoice.updated" and data(same)["object"]["status"] == "uncollectible"
    await sim.pay_invoice(
        gw.PayInvoice(provider_invoice_id=provider_invoice, provider_payment_method_id=None),
        idempotency_key="paid-on-its-page",
    )
    paid = await h.send("invoice.refresh", t, {"invoice_id": invoice})
    assert kind(paid) == "invoice.paid" and data(paid)["previous_status"] == "uncollectible"
    assert h.processor.limits.table[f"{t}:limits"]["volume"] == {"EUR": 50_000}


async def test_a_written_off_invoices_pays_keep_their_holds() -> None:
    """It may still be paid: not learnt void (whose parked pays' holds go)."""
    obj = {"id": "in_1", "subscription_id": None, "status": "uncollectible"}
    assert not learnt_void("invoice.marked_uncollectible", obj)
    assert learnt_void("invoice.voided", {**obj, "status": "void"})


@pytest.mark.parametrize("capabilities", [SQUARE_CAPABILITIES, PADDLE_CAPABILITIES])
async def test_square_and_paddle_lack_it(capabilities: frozenset[gw.Capability]) -> None:
    with pytest.raises(UnsupportedOperation):
        gw.require_operation("mark_invoice_uncollectible", capabilities, capabilities, "square")
