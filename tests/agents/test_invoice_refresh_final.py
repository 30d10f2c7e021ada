"""invoice.refresh of a one-off invoice already paid or void here (final): answered
`invoice.updated` from its record, without a provider read, never a second
`invoice.paid`/`invoice.voided` nor anything counted again. What a Stripe webhook's
sealed refresh meets when the event (the echo of paystream's own invoice.pay or
invoice.void) reached the endpoint before that command's outcome was recorded: the
endpoint read the invoice open and queued the refresh behind the command (a tenant's
commands run in order). It was refused `invalid_state`: a `command.rejected` under the
webhook's command id, which the tenant never sent (review h81rb F1)."""

from __future__ import annotations

import pytest

from tests.agents.final_reads import assert_answered_from_the_record, provider_reads
from tests.agents.harness import Harness, data, kind
from tests.agents.test_invoices import _charges, _made, _open_invoice

pytestmark = pytest.mark.asyncio


async def test_the_echo_of_a_pay_is_read_from_the_record_not_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    t = h.add_tenant(limits={"daily_payment_volume": {"EUR": 200_000}})
    invoice = await _open_invoice(h, t)
    paid = await h.send("invoice.pay", t, {"invoice_id": invoice})
    assert kind(paid) == "invoice.paid", data(paid)
    reads = provider_reads(h, t, monkeypatch, "retrieve_invoice")
    # The webhook's refresh, queued while the invoice read open at the endpoint.
    echo = await h.send("invoice.refresh", t, {"invoice_id": invoice})
    assert_answered_from_the_record(echo, "invoice.updated", "paid")
    assert reads == []  # (final: nothing the provider says moves it)
    assert len(await _charges(h, t)) == 1
    assert h.processor.limits.table[f"{t}:limits"]["volume"] == {"EUR": 50_000}
    # Still final: no second pay.
    again = await h.send("invoice.pay", t, {"invoice_id": invoice})
    assert kind(again) == "command.rejected", data(again)


async def test_the_echo_of_a_void_is_read_from_the_record_not_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    t = h.add_tenant()
    invoice = await _open_invoice(h, t)
    await _made(h, t, "invoice.void", {"invoice_id": invoice})
    reads = provider_reads(h, t, monkeypatch, "retrieve_invoice")
    echo = await h.send("invoice.refresh", t, {"invoice_id": invoice})
    assert_answered_from_the_record(echo, "invoice.updated", "void")
    assert reads == []


async def test_a_written_off_invoice_paid_then_read_again_is_counted_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written off, paid by invoice.pay, then the echo's refresh: the day's volume holds
    the one charge."""
    h = harness
    t = h.add_tenant(limits={"daily_payment_volume": {"EUR": 200_000}})
    invoice = await _open_invoice(h, t)
    await _made(h, t, "invoice.mark_uncollectible", {"invoice_id": invoice})
    paid = await h.send("invoice.pay", t, {"invoice_id": invoice})
    assert kind(paid) == "invoice.paid", data(paid)
    echo = await h.send("invoice.refresh", t, {"invoice_id": invoice})
    assert kind(echo) == "invoice.updated", data(echo)
    assert h.processor.limits.table[f"{t}:limits"]["volume"] == {"EUR": 50_000}
