"""invoice.update re-driven late (review h81re F1): a parked update A, then update B
lands, then A is re-driven (`dlq replay`). As customer.update's and subscription.update's
(README: a re-drive after another command changed the entity since its first attempt is
not sent again), A neither undoes B's lines nor leaves the record saying what the
provider does not hold: the invoice is read back and A refused `invalid_state`."""

from __future__ import annotations

from typing import Any

import pytest

from tests.agents.harness import Harness, data, kind, new_tenant_id, simulator_of
from tests.agents.test_invoices import LINES, _made
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio

A_LINES = [{"description": "A, hours", "amount": 12000, "quantity": 2}]  # 24000
B_LINES = [{"description": "B, travel", "amount": 3500}]  # 3500


async def _provider_lines(h: Harness, t: str, invoice: str) -> list[tuple[int, int]]:
    provider_invoice = h.processor.tables.invoices[f"{t}:{invoice}"]["provider_invoice_id"]
    stored = await simulator_of(h, t)._store.read(provider_invoice)
    assert stored is not None
    return [(int(line["unit_amount"]), int(line["quantity"])) for line in stored["lines"]]


async def _parked(h: Harness, failing: str) -> tuple[str, str]:
    """A tenant's draft and its update A parked (failing under its key 3 times)."""
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={failing: {f"ps:{t}:a": 3}})
    cus = await _made(h, t, "customer.create", {"email": "a@example.com"})
    pm = await _made(
        h, t, "payment_method.attach", {"customer_id": cus["id"], "token": "pm_card_visa"}
    )
    body = {"customer_id": cus["id"], "payment_method_id": pm["id"], "currency": "EUR",
            "line_items": LINES}  # fmt: skip
    iid = (await _made(h, t, "invoice.create", body))["id"]
    emits = await h.processor.process(
        _command(t, "invoice.update", {"invoice_id": iid, "line_items": A_LINES}, "a")
    )
    assert [e.topic for e in emits] == [h.settings.retry_topic]  # (A parked)
    return t, iid


@pytest.mark.parametrize("stored", [True, False], ids=["stored-then-lost", "never-reached"])
async def test_a_parked_update_re_driven_after_a_newer_one_keeps_the_newer(
    harness: Harness, stored: bool
) -> None:
    h = harness
    t, iid = await _parked(h, "lose_response_first" if stored else "fail_first")
    b = {"invoice_id": iid, "line_items": B_LINES}
    assert kind(await _answer(h, _command(t, "invoice.update", b, "b"))) == "invoice.updated"
    assert await _provider_lines(h, t, iid) == [(3500, 1)]
    a = {"invoice_id": iid, "line_items": A_LINES}
    out = await _answer(h, _command(t, "invoice.update", a, "a"))  # `dlq replay`
    assert kind(out) == "command.rejected" and data(out)["reason"] == "invalid_state", data(out)
    assert "changed since this update was first tried" in data(out)["message"]
    at_provider = await _provider_lines(h, t, iid)
    record: dict[str, Any] = h.processor.tables.invoices[f"{t}:{iid}"]
    # B, the newer update, stands, and the record says what the provider holds (before
    # the fix: A's lines recorded over B's held, or A's set over B's).
    assert at_provider == [(3500, 1)]
    lines = [(line["amount"], line.get("quantity", 1)) for line in record["line_items"]]
    assert lines == at_provider and record["amount"] == 3500, record


async def test_a_parked_update_with_nothing_since_is_applied(harness: Harness) -> None:
    h = harness
    t, iid = await _parked(h, "lose_response_first")
    a = {"invoice_id": iid, "line_items": A_LINES}
    out = await _answer(h, _command(t, "invoice.update", a, "a"))  # `dlq replay`
    assert kind(out) == "invoice.updated", data(out)
    assert data(out)["object"]["amount"] == 24000
    assert await _provider_lines(h, t, iid) == [(12000, 2)]


async def test_a_parked_update_in_effect_re_driven_after_a_field_change(
    harness: Harness,
) -> None:
    """A's lines set at the provider (its answer lost), then B changed only the
    description. Re-driven, A is read back and refused: the total read back is A's, and
    so are the lines read with it (gw.InvoiceResult.line_items; the record kept the
    lines before A)."""
    h = harness
    t, iid = await _parked(h, "lose_response_first")
    b = {"invoice_id": iid, "description": "March"}
    assert kind(await _answer(h, _command(t, "invoice.update", b, "b"))) == "invoice.updated"
    a = {"invoice_id": iid, "line_items": A_LINES}
    await _answer(h, _command(t, "invoice.update", a, "a"))  # `dlq replay`
    record: dict[str, Any] = h.processor.tables.invoices[f"{t}:{iid}"]
    assert await _provider_lines(h, t, iid) == [(12000, 2)]
    assert record["amount"] == 24000
    lines = [(line["amount"], line.get("quantity", 1)) for line in record["line_items"]]
    assert lines == [(12000, 2)], record
