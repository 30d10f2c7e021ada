"""An invoice's description given "" (review h81re F5): Stripe holds none (null: its
empty value unsets a field), so paystream records none (None) and the simulator holds
none, at invoice.create and invoice.update; the update clears it at Stripe
(``description=`` sent), its record saying so."""

from __future__ import annotations

import pytest

from tests.agents.harness import Harness, data, kind
from tests.agents.test_invoice_update import _at_provider
from tests.agents.test_invoice_update_stripe import _draft as _stripe_draft
from tests.agents.test_invoice_update_stripe import _get, _stripe_tenant
from tests.agents.test_invoices import _draft
from tests.agents.test_invoices_stripe import sh  # noqa: F401 (a fixture)

pytestmark = pytest.mark.asyncio


async def test_an_empty_description_is_none_in_the_simulator(harness: Harness) -> None:
    t = harness.add_tenant()
    made = await _draft(harness, t, description="")
    record = harness.processor.tables.invoices[f"{t}:{made['id']}"]
    assert record.get("description") is None
    assert (await _at_provider(harness, t, made["id"]))["description"] is None
    named = await _draft(harness, t, description="Q1")
    out = await harness.send("invoice.update", t, {"invoice_id": named["id"], "description": ""})
    assert kind(out) == "invoice.updated", data(out)
    assert data(out)["object"].get("description") is None
    record = harness.processor.tables.invoices[f"{t}:{named['id']}"]
    assert record.get("description") is None
    assert (await _at_provider(harness, t, named["id"]))["description"] is None


async def test_an_empty_description_clears_it_at_stripe(
    sh: Harness,  # noqa: F811
    localstripe_url: str,
) -> None:
    t = _stripe_tenant(sh)
    draft, provider_invoice = await _stripe_draft(sh, t)
    iid = draft["id"]
    out = await sh.send("invoice.update", t, {"invoice_id": iid, "description": "March"})
    assert kind(out) == "invoice.updated", data(out)
    assert (await _get(localstripe_url, f"/v1/invoices/{provider_invoice}"))["description"] == (
        "March"
    )
    out = await sh.send("invoice.update", t, {"invoice_id": iid, "description": ""})
    assert kind(out) == "invoice.updated", data(out)
    assert (await _get(localstripe_url, f"/v1/invoices/{provider_invoice}"))["description"] is None
    assert sh.processor.tables.invoices[f"{t}:{iid}"].get("description") is None
