"""invoice.update re-driven late (review h81re): a parked update A, then update B lands,
then A is re-driven (`dlq replay`). As customer.update's and subscription.update's
(README: "a `customer.update` re-driven after another command changed the customer
since its first attempt is not sent again"), A must neither undo B's lines nor leave the
record saying what the provider does not hold."""

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


@pytest.mark.xfail(strict=True, reason="review h81re F1: a late re-drive is sent again")
@pytest.mark.parametrize("stored", [True, False], ids=["stored-then-lost", "never-reached"])
async def test_a_parked_update_re_driven_after_a_newer_one_keeps_the_newer(
    harness: Harness, stored: bool
) -> None:
    h = harness
    t = new_tenant_id()
    failing = "lose_response_first" if stored else "fail_first"
    h.add_tenant(t, gateway_options={failing: {f"ps:{t}:a": 3}})
    cus = await _made(h, t, "customer.create", {"email": "a@example.com"})
    pm = await _made(
        h, t, "payment_method.attach", {"customer_id": cus["id"], "token": "pm_card_visa"}
    )
    body = {"customer_id": cus["id"], "payment_method_id": pm["id"], "currency": "EUR",
            "line_items": LINES}  # fmt: skip
    draft = await _made(h, t, "invoice.create", body)
    iid = draft["id"]
    emits = await h.processor.process(
        _command(t, "invoice.update", {"invoice_id": iid, "line_items": A_LINES}, "a")
    )
    assert [e.topic for e in emits] == [h.settings.retry_topic]  # (A parked)
    b = await _answer(
        h, _command(t, "invoice.update", {"invoice_id": iid, "line_items": B_LINES}, "b")
    )
    assert kind(b) == "invoice.updated", data(b)
    assert await _provider_lines(h, t, iid) == [(3500, 1)]
    out = await _answer(
        h, _command(t, "invoice.update", {"invoice_id": iid, "line_items": A_LINES}, "a")
    )
    at_provider = await _provider_lines(h, t, iid)
    record: dict[str, Any] = h.processor.tables.invoices[f"{t}:{iid}"]
    # The record says what the provider holds ...
    lines = [(line["amount"], line.get("quantity", 1)) for line in record["line_items"]]
    assert lines == at_provider, (kind(out), data(out), at_provider)
    assert record["amount"] == sum(u * q for u, q in at_provider), (record, at_provider)
    # ... and B, the newer update, was not silently undone by A's late re-drive.
    assert at_provider == [(3500, 1)], (kind(out), data(out))
