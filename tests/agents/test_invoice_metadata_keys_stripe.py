"""Stripe's 50 metadata keys on a one-off invoice count paystream's own reference
(`paystream_invoice`, which its webhooks find it by) where it is sent (review h81re F4):
made with 49 of the tenant's keys, the invoice holds 50 at Stripe, and an update adding
one more passed paystream's check (49 + 1) and was refused by Stripe (400). Now it is
refused `validation_error` before any call, not remembered. Made with 50 of the
tenant's keys, the reference is not sent (gw.invoice_ref), and the invoice's keys may
still change. localstripe's FAKE holds an invoice to 50 keys, as Stripe does."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways import base as gw
from tests.agents.harness import Harness, data, kind
from tests.agents.test_invoice_update_stripe import _get, _stripe_tenant
from tests.agents.test_invoices_stripe import _made, sh  # noqa: F401 (sh: a fixture)

pytestmark = pytest.mark.asyncio


def _keys(n: int) -> dict[str, str]:
    return {f"k{i:02d}": "v" for i in range(n)}


async def _invoice_with(sh: Harness, t: str, metadata: dict[str, str]) -> tuple[str, str]:  # noqa: F811
    cus = await _made(sh, t, "customer.create", {"email": "keys@example.com"})
    body = {"customer_id": cus["id"], "currency": "USD", "collection_method": "send_invoice",
            "days_until_due": 30, "line_items": [{"description": "Fee", "amount": 1500}],
            "metadata": metadata}  # fmt: skip
    made = await _made(sh, t, "invoice.create", body)
    return str(made["id"]), str(made["provider_invoice_id"])


async def test_the_reference_counts_toward_stripes_50_keys(
    sh: Harness,  # noqa: F811
    localstripe_url: str,
) -> None:
    t = _stripe_tenant(sh)
    iid, provider_invoice = await _invoice_with(sh, t, _keys(49))
    held = await _get(localstripe_url, f"/v1/invoices/{provider_invoice}")
    assert len(held["metadata"]) == 50 and gw.INVOICE_REF_KEY in held["metadata"]
    extra = {"invoice_id": iid, "metadata": {"extra": "x"}}
    out = await sh.send("invoice.update", t, extra, command_id="extra")
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == "validation_error", data(out)
    assert gw.INVOICE_REF_KEY in data(out)["message"]
    held = await _get(localstripe_url, f"/v1/invoices/{provider_invoice}")
    assert "extra" not in held["metadata"]
    # One key for another (49 of the tenant's still), or a tenant's key of the
    # reference's name (never sent): applied.
    swap = {"k00": "", "po": "p-9", gw.INVOICE_REF_KEY: "mine"}
    out = await sh.send("invoice.update", t, {"invoice_id": iid, "metadata": swap})
    assert kind(out) == "invoice.updated", data(out)
    held = await _get(localstripe_url, f"/v1/invoices/{provider_invoice}")
    assert len(held["metadata"]) == 50 and held["metadata"]["po"] == "p-9"
    assert gw.read_invoice_ref(held["metadata"]) == (t, iid)
    # Not remembered: the same command, sent again once a key is removed, is applied.
    drop = await sh.send("invoice.update", t, {"invoice_id": iid, "metadata": {"k01": ""}})
    assert kind(drop) == "invoice.updated", data(drop)
    out = await sh.send("invoice.update", t, extra, command_id="extra")
    assert kind(out) == "invoice.updated", data(out)
    held = await _get(localstripe_url, f"/v1/invoices/{provider_invoice}")
    assert len(held["metadata"]) == 50 and held["metadata"]["extra"] == "x"


async def test_an_invoice_made_with_50_keys_carries_no_reference(
    sh: Harness,  # noqa: F811
    localstripe_url: str,
) -> None:
    t = _stripe_tenant(sh)
    iid, provider_invoice = await _invoice_with(sh, t, _keys(50))
    held = await _get(localstripe_url, f"/v1/invoices/{provider_invoice}")
    assert held["metadata"] == _keys(50)  # (the reference left out: Stripe's limit)
    body: dict[str, Any] = {"invoice_id": iid, "metadata": {"k00": "changed"}}
    out = await sh.send("invoice.update", t, body)
    assert kind(out) == "invoice.updated", data(out)
    held = await _get(localstripe_url, f"/v1/invoices/{provider_invoice}")
    assert len(held["metadata"]) == 50 and held["metadata"]["k00"] == "changed"
    out = await sh.send("invoice.update", t, {"invoice_id": iid, "metadata": {"po": "p-9"}})
    assert kind(out) == "command.rejected" and data(out)["reason"] == "validation_error"


async def test_the_fake_holds_an_invoice_to_50_keys(localstripe_url: str) -> None:
    """(So the tests above can fail: Stripe's 400 past 50 keys, on an update's merge.)"""
    import aiohttp

    from tests.agents.test_invoices_stripe import AUTH

    async with aiohttp.ClientSession() as session:
        form = {"email": "fake@example.com"}
        async with session.post(f"{localstripe_url}/v1/customers", data=form, headers=AUTH) as r:
            cus = (await r.json())["id"]
        form = {"customer": cus, "pending_invoice_items_behavior": "exclude",
                **{f"metadata[{k}]": v for k, v in _keys(50).items()}}  # fmt: skip
        async with session.post(f"{localstripe_url}/v1/invoices", data=form, headers=AUTH) as r:
            assert r.status == 200, await r.text()
            inv = (await r.json())["id"]
        form = {"metadata[one_more]": "x"}
        url = f"{localstripe_url}/v1/invoices/{inv}"
        async with session.post(url, data=form, headers=AUTH) as r:
            assert r.status == 400, await r.text()
        form = {"customer": cus, "pending_invoice_items_behavior": "exclude",
                **{f"metadata[{k}]": v for k, v in _keys(51).items()}}  # fmt: skip
        async with session.post(f"{localstripe_url}/v1/invoices", data=form, headers=AUTH) as r:
            assert r.status == 400, await r.text()
