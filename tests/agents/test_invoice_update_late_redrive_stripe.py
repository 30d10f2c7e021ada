"""A Stripe tenant's invoice.update re-driven late (review h81re): update A parked after
its first new item was added, update B lands (deleting A's item, adding its own), then A
is re-driven. Sent again, A deleted B's items (not made by A) and sent its lines again
under their derived keys: Stripe answered the first from its key (the item B deleted:
nothing added), so the draft held A2 alone, neither update's lines, the record saying
A1 and A2 at 30.00, answered `invoice.updated`. Now A is not sent again: read back,
refused `invalid_state`, B standing."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.stripe.gateway import StripeGateway
from tests.agents.harness import Harness, data, kind
from tests.agents.test_invoice_update_stripe import _draft, _items, _stripe_tenant
from tests.agents.test_invoices_stripe import sh  # noqa: F401 (a fixture)
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio

A_LINES = [{"description": "A1", "amount": 2000}, {"description": "A2", "amount": 3000}]
B_LINES = [{"description": "B1", "amount": 1000}]


async def test_a_parked_update_re_driven_after_a_newer_one_at_stripe(
    sh: Harness,  # noqa: F811
    localstripe_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = _stripe_tenant(sh)
    draft, provider_invoice = await _draft(sh, t)
    iid = draft["id"]
    real = StripeGateway._add_item

    async def cut_a(self: StripeGateway, item: dict[str, Any], key: str) -> None:
        if key.startswith(f"ps:{t}:a") and not key.endswith("line0"):
            raise GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, "cut", provider="stripe",
                               retryable=True)  # fmt: skip
        await real(self, item, key)

    monkeypatch.setattr(StripeGateway, "_add_item", cut_a)
    a = {"invoice_id": iid, "line_items": A_LINES}
    emits = await sh.processor.process(_command(t, "invoice.update", a, "a"))
    assert [e.topic for e in emits] == [sh.settings.retry_topic]  # (A parked)
    assert await _items(localstripe_url, provider_invoice) == [("A1", 2000, 1)]
    monkeypatch.setattr(StripeGateway, "_add_item", real)
    b = await _answer(
        sh, _command(t, "invoice.update", {"invoice_id": iid, "line_items": B_LINES}, "b")
    )
    assert kind(b) == "invoice.updated", data(b)
    assert await _items(localstripe_url, provider_invoice) == [("B1", 1000, 1)]
    out = await _answer(sh, _command(t, "invoice.update", a, "a"))  # `dlq replay`
    at_stripe = await _items(localstripe_url, provider_invoice)
    record = sh.processor.tables.invoices[f"{t}:{iid}"]
    assert kind(out) == "command.rejected" and data(out)["reason"] == "invalid_state", data(out)
    # B, the newer update, stands, and the record says what Stripe holds.
    assert at_stripe == [("B1", 1000, 1)], (kind(out), at_stripe)
    assert [line["description"] for line in record["line_items"]] == ["B1"]
    assert record["amount"] == 1000
