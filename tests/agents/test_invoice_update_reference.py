"""invoice.update's metadata never touches paystream's own webhook reference at Stripe
(review h81re): `paystream_invoice` (gw.INVOICE_REF_KEY), which Stripe's invoice.*
events find the invoice by, is set by paystream at invoice.create whatever the tenant's
metadata says (gw.invoice_ref replaces a producer's value); an update's metadata given
"" under that key removed it (the invoice's webhooks then found nothing), and another
value pointed the invoice's events at another invoice of the tenant's."""

from __future__ import annotations

import pytest

from paystream.gateways import base as gw
from tests.agents.harness import Harness, data, kind
from tests.agents.test_invoice_update_stripe import _draft, _get, _stripe_tenant
from tests.agents.test_invoices_stripe import sh  # noqa: F401 (a fixture)

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("value", ["", "other-invoice"], ids=["removed", "pointed-elsewhere"])
async def test_the_tenants_metadata_leaves_the_reference_alone(
    sh: Harness,  # noqa: F811
    localstripe_url: str,
    value: str,
) -> None:
    t = _stripe_tenant(sh)
    draft, provider_invoice = await _draft(sh, t)
    ref = f"{t}:{draft['id']}"
    forged = value and f"{t}:{value}"
    body = {"invoice_id": draft["id"], "metadata": {gw.INVOICE_REF_KEY: forged, "po": "p-9"}}
    out = await sh.send("invoice.update", t, body)
    assert kind(out) == "invoice.updated", data(out)
    held = await _get(localstripe_url, f"/v1/invoices/{provider_invoice}")
    assert held["metadata"] == {gw.INVOICE_REF_KEY: ref, "order": "o-1", "po": "p-9"}, held
    assert gw.read_invoice_ref(held["metadata"]) == (t, draft["id"])
