"""A Stripe tenant's invoice.update through the pipeline against localstripe
(tests/fixtures/localstripe_server.py: the invoice update, ``GET /v1/invoiceitems?invoice=``
and ``DELETE /v1/invoiceitems/{id}`` FAKEs from Stripe's reference): a draft's items
replaced (the old ones deleted, the new added), its description and metadata changed,
its new total read back; sent again, or cut between two of its item calls and sent again
under its key, the draft holds exactly the lines asked, none twice; an open invoice is
refused before any change."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from paystream.gateways import base as gw
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.stripe.gateway import StripeGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind
from tests.agents.test_invoices_stripe import AUTH, _made, sh  # noqa: F401 (sh: a fixture)

pytestmark = pytest.mark.asyncio

NEW_LINES = [
    {"description": "Design", "amount": 2000, "quantity": 3},
    {"description": "Travel", "amount": 750},
    {"description": "Printing", "amount": 1250},
]
NEW_TOTAL = 8000


async def _draft(sh: Harness, t: str) -> tuple[dict[str, Any], str]:  # noqa: F811
    """A draft of 45.00 USD (two lines) to be charged to a saved card; its Stripe id."""
    cus = await _made(sh, t, "customer.create", {"email": "edit@example.com"})
    pm = await _made(
        sh, t, "payment_method.attach", {"customer_id": cus["id"], "token": "pm_card_visa"}
    )
    lines = [{"description": "Hours", "amount": 1500, "quantity": 2}, {"description": "Fee",
             "amount": 1500}]  # fmt: skip
    body = {"customer_id": cus["id"], "payment_method_id": pm["id"], "currency": "USD",
            "line_items": lines, "metadata": {"order": "o-1"}}  # fmt: skip
    draft = await _made(sh, t, "invoice.create", body)
    assert draft["amount"] == 4500
    return draft, str(draft["provider_invoice_id"])


async def _get(url: str, path: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}{path}", headers=AUTH) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def _items(url: str, provider_invoice: str) -> list[tuple[str, int, int]]:
    listed = await _get(url, f"/v1/invoiceitems?invoice={provider_invoice}&limit=100")
    return sorted(
        (i["description"], int(i["unit_amount_decimal"]), int(i["quantity"]))
        for i in listed["data"]
    )


_ASKED = sorted(
    (line["description"], line["amount"], line.get("quantity", 1)) for line in NEW_LINES
)


def _stripe_tenant(sh: Harness) -> str:  # noqa: F811
    return sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})


async def test_a_drafts_lines_replaced_at_stripe(sh: Harness, localstripe_url: str) -> None:  # noqa: F811
    t = _stripe_tenant(sh)
    draft, provider_invoice = await _draft(sh, t)
    body = {"invoice_id": draft["id"], "line_items": NEW_LINES, "description": "March",
            "metadata": {"order": "", "po": "p-9"}}  # fmt: skip
    out = await sh.send("invoice.update", t, body)
    assert kind(out) == "invoice.updated", data(out)
    assert data(out)["previous_status"] == "draft"
    assert data(out)["object"]["amount"] == NEW_TOTAL
    assert data(out)["object"]["metadata"] == {"po": "p-9"}
    assert await _items(localstripe_url, provider_invoice) == _ASKED
    held = await _get(localstripe_url, f"/v1/invoices/{provider_invoice}")
    assert (held["status"], held["amount_due"], held["description"]) == (
        "draft",
        NEW_TOTAL,
        "March",
    )
    # (paystream's reference for its webhooks kept: merged, as Stripe's metadata is)
    assert held["metadata"] == {"paystream_invoice": f"{t}:{draft['id']}", "po": "p-9"}
    # Finalized and paid: the new total charged.
    await _made(sh, t, "invoice.finalize", {"invoice_id": draft["id"]})
    paid = await sh.send("invoice.pay", t, {"invoice_id": draft["id"]})
    assert kind(paid) == "invoice.paid" and data(paid)["object"]["amount"] == NEW_TOTAL, data(paid)


async def test_an_update_cut_between_its_item_calls_sets_each_line_once(
    sh: Harness,  # noqa: F811
    localstripe_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its second new item's POST fails after the old items were deleted and the first
    added (a worker gone between two calls): sent again under the same key, the update
    finishes the same replacement, the first line not added twice."""
    t = _stripe_tenant(sh)
    draft, provider_invoice = await _draft(sh, t)
    real = StripeGateway._add_item
    calls = {"n": 0}

    async def cut_once(self: StripeGateway, item: dict[str, Any], key: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise GatewayError(
                ErrorCode.PROVIDER_UNAVAILABLE, "cut", provider="stripe", retryable=True
            )
        await real(self, item, key)

    monkeypatch.setattr(StripeGateway, "_add_item", cut_once)
    body = {"invoice_id": draft["id"], "line_items": NEW_LINES}
    first = await sh.send("invoice.update", t, body, command_id="up-cut")
    # (at Stripe now: the first new line, the old ones gone)
    if kind(first) != "invoice.updated":
        assert calls["n"] == 2
        assert await _items(localstripe_url, provider_invoice) == [("Design", 2000, 3)]
        again = await sh.send("invoice.update", t, body, command_id="up-cut")
        assert kind(again) == "invoice.updated", data(again)
    assert await _items(localstripe_url, provider_invoice) == _ASKED
    # (the first line added once: the call sent again found it, named by the update)
    assert calls["n"] == 4
    held = await _get(localstripe_url, f"/v1/invoices/{provider_invoice}")
    assert held["amount_due"] == NEW_TOTAL
    # Sent once more under its key (an answer lost): the lines as they are, none added.
    monkeypatch.setattr(StripeGateway, "_add_item", real)
    gateway = sh.pool.get(Tenant.model_validate(sh.tenants[t]))
    again = await gateway.update_invoice(
        gw.UpdateInvoice(
            provider_invoice_id=provider_invoice,
            currency="USD",
            lines=tuple(
                gw.InvoiceLine(
                    description=line["description"],
                    unit_amount=line["amount"],
                    quantity=line.get("quantity", 1),
                )
                for line in NEW_LINES
            ),
        ),
        idempotency_key=f"ps:{t}:up-cut",
    )
    assert again.amount.amount == NEW_TOTAL
    assert await _items(localstripe_url, provider_invoice) == _ASKED


async def test_an_open_invoice_is_refused(sh: Harness, localstripe_url: str) -> None:  # noqa: F811
    t = _stripe_tenant(sh)
    draft, provider_invoice = await _draft(sh, t)
    await _made(sh, t, "invoice.finalize", {"invoice_id": draft["id"]})
    out = await sh.send("invoice.update", t, {"invoice_id": draft["id"], "line_items": NEW_LINES})
    assert kind(out) == "command.rejected" and data(out)["reason"] == "invalid_state", data(out)
    assert "open" in data(out)["message"]
    assert len(await _items(localstripe_url, provider_invoice)) == 2  # (unchanged)
