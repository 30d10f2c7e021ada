"""A Stripe tenant's invoice.mark_uncollectible through the pipeline against localstripe
(tests/fixtures/localstripe_server.py: ``/mark_uncollectible`` a FAKE from Stripe's
reference): POST /v1/invoices/{id}/mark_uncollectible, read back ``uncollectible``; then
still paid, or voided, at Stripe; a write-off sent again under its key, or once its
key's answer is gone, is answered uncollectible; the invoice's metadata names
paystream's invoice (its webhooks find it)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from paystream.gateways import base as gw
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind
from tests.agents.test_invoices_stripe import AUTH, _made, sh  # noqa: F401 (sh: a fixture)

pytestmark = pytest.mark.asyncio


async def _open(sh: Harness, t: str) -> tuple[dict[str, Any], str]:  # noqa: F811
    """An open invoice of 45.00 USD to be charged to a saved card; its Stripe id."""
    cus = await _made(sh, t, "customer.create", {"email": "written@example.com"})
    pm = await _made(
        sh, t, "payment_method.attach", {"customer_id": cus["id"], "token": "pm_card_visa"}
    )
    lines = [{"description": "Hours", "amount": 4500}]
    body = {"customer_id": cus["id"], "payment_method_id": pm["id"], "currency": "USD",
            "line_items": lines}  # fmt: skip
    draft = await _made(sh, t, "invoice.create", body)
    await _made(sh, t, "invoice.finalize", {"invoice_id": draft["id"]})
    return draft, str(draft["provider_invoice_id"])


async def _at_stripe(url: str, provider_invoice: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/invoices/{provider_invoice}", headers=AUTH) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


def _stripe_tenant(sh: Harness) -> str:  # noqa: F811
    return sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})


async def test_an_open_invoice_written_off_then_paid(sh: Harness, localstripe_url: str) -> None:  # noqa: F811
    t = _stripe_tenant(sh)
    draft, provider_invoice = await _open(sh, t)
    held = await _at_stripe(localstripe_url, provider_invoice)
    # (named at Stripe: its invoice.* webhooks find paystream's invoice by it)
    assert held["metadata"] == {"paystream_invoice": f"{t}:{draft['id']}"}
    out = await sh.send("invoice.mark_uncollectible", t, {"invoice_id": draft["id"]})
    assert kind(out) == "invoice.marked_uncollectible", data(out)
    assert data(out)["object"]["status"] == "uncollectible"
    assert data(out)["previous_status"] == "open"
    assert (await _at_stripe(localstripe_url, provider_invoice))["status"] == "uncollectible"
    paid = await sh.send("invoice.pay", t, {"invoice_id": draft["id"]})
    assert kind(paid) == "invoice.paid", data(paid)
    assert data(paid)["previous_status"] == "uncollectible"
    assert data(paid)["object"]["amount"] == 4500
    assert (await _at_stripe(localstripe_url, provider_invoice))["status"] == "paid"


async def test_an_uncollectible_invoice_voided(sh: Harness, localstripe_url: str) -> None:  # noqa: F811
    t = _stripe_tenant(sh)
    draft, provider_invoice = await _open(sh, t)
    await _made(sh, t, "invoice.mark_uncollectible", {"invoice_id": draft["id"]})
    voided = await sh.send("invoice.void", t, {"invoice_id": draft["id"]})
    assert kind(voided) == "invoice.voided", data(voided)
    assert data(voided)["previous_status"] == "uncollectible"
    assert (await _at_stripe(localstripe_url, provider_invoice))["status"] == "void"


async def test_a_write_off_sent_again_is_answered_uncollectible(
    sh: Harness,  # noqa: F811
    localstripe_url: str,
) -> None:
    """Under its key (Stripe's replay), and under another once its key's answer is gone
    (Stripe refuses it; read back, uncollectible is the answer)."""
    t = _stripe_tenant(sh)
    _, provider_invoice = await _open(sh, t)
    gateway = sh.pool.get(Tenant.model_validate(sh.tenants[t]))
    req = gw.MarkInvoiceUncollectible(provider_invoice_id=provider_invoice)
    first = await gateway.mark_invoice_uncollectible(req, idempotency_key=f"wo-{t}")
    again = await gateway.mark_invoice_uncollectible(req, idempotency_key=f"wo-{t}")
    other = await gateway.mark_invoice_uncollectible(req, idempotency_key=f"wo2-{t}")
    for answer in (first, again, other):
        assert answer.status is gw.InvoiceStatus.UNCOLLECTIBLE, answer


async def test_a_draft_is_refused_before_stripe_is_asked(
    sh: Harness,  # noqa: F811
    localstripe_url: str,
) -> None:
    t = _stripe_tenant(sh)
    cus = await _made(sh, t, "customer.create", {"email": "draft@example.com"})
    body = {
        "customer_id": cus["id"],
        "currency": "USD",
        "collection_method": "send_invoice",
        "days_until_due": 14,
        "line_items": [{"description": "Fee", "amount": 900}],
    }
    draft = await _made(sh, t, "invoice.create", body)
    out = await sh.send("invoice.mark_uncollectible", t, {"invoice_id": draft["id"]})
    assert kind(out) == "command.rejected" and data(out)["reason"] == "invalid_state"
    held = await _at_stripe(localstripe_url, str(draft["provider_invoice_id"]))
    assert held["status"] == "draft"
