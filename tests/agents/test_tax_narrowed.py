"""A tenant whose capabilities leave `tax` out (narrowed by the `capabilities` option, or
a provider without it) may not tax anew: `tax_rate.create`, `tax.calculate`, a
`payment.create` naming a `tax_calculation_id` and a `subscription.create` with
`tax_rate_ids` are refused `unsupported` before anything is asked or recorded (review
h74t: only `tax_rate.create` was, and a narrowed tenant's subscriptions still sent its
rates to Stripe as `default_tax_rates`). Archiving a rate stays allowed (a stop, as a
cancel is: gateways/base.py UNNARROWED_OPERATIONS), and so does a taxed create let
through before the narrowing (the provider may have charged)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.agents.harness import Harness, data, kind, new_tenant_id, outcome_of
from tests.agents.test_subscriptions import _customer
from tests.agents.test_tax import VAT, _gateway, _rate, _rejected

pytestmark = pytest.mark.asyncio
NO_TAX = ["customers", "payment_methods", "payments", "refunds", "subscriptions"]
_offsets = itertools.count(1)


def _narrow(h: Harness, t: str, **options: Any) -> None:
    h.tenants[t] = {
        **h.tenants[t],
        "gateway_options": {**options, "capabilities": NO_TAX},
    }


async def _calculated(h: Harness, t: str) -> dict[str, Any]:
    out = await h.send(
        "tax.calculate",
        t,
        {"currency": "GBP", "line_items": [{"amount": 1000, "reference": "l1"}],
         "tax_rate_ids": ["vat"]},
    )  # fmt: skip
    assert kind(out) == "tax.calculated", data(out)
    return dict(data(out)["object"])


async def test_narrowed_out_tax_refuses_what_would_tax_anew(harness: Harness) -> None:
    t = harness.add_tenant()
    await _rate(harness, t)
    await _rate(harness, t, "old")
    calc = await _calculated(harness, t)  # (made before the narrowing)
    await _customer(harness, t)
    _narrow(harness, t)
    effects = await _gateway(harness, t).effects()

    refused = _rejected(
        await harness.send(
            "tax.calculate",
            t,
            {
                "currency": "GBP",
                "line_items": [{"amount": 1000, "reference": "l2"}],
                "tax_rate_ids": ["vat"],
            },
        ),
        "unsupported",
    )
    assert "tax" in refused["message"], refused
    pay = {"amount": 1200, "currency": "GBP", "payment_method_token": "pm_card_visa"}
    _rejected(
        await harness.send(
            "payment.create", t, {**pay, "payment_id": "p1", "tax_calculation_id": calc["id"]}
        ),
        "unsupported",
    )
    sub = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1",
           "amount": 1000, "currency": "GBP", "interval": "month"}  # fmt: skip
    _rejected(
        await harness.send("subscription.create", t, {**sub, "tax_rate_ids": ["vat"]}),
        "unsupported",
    )
    _rejected(await harness.send("tax_rate.create", t, VAT), "unsupported")
    # Nothing was asked of the provider nor recorded for them.
    assert await _gateway(harness, t).effects() == effects
    assert f"{t}:p1" not in harness.tables.payments
    assert f"{t}:s1" not in harness.tables.subscriptions

    # Untaxed, the same tenant still pays and subscribes; a rate is still archived.
    out = await harness.send("payment.create", t, {**pay, "payment_id": "p2"})
    assert kind(out) == "payment.succeeded", data(out)
    out = await harness.send("subscription.create", t, sub)
    assert kind(out) == "subscription.created", data(out)
    out = await harness.send("tax_rate.archive", t, {"tax_rate_id": "old"})
    assert kind(out) == "tax_rate.archived", data(out)


def _record(tenant: str, body: dict[str, Any]) -> Inbound:
    event = build_command("payment.create", tenant, body, command_id="c1")
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(
        rec.key, rec.value, dict(rec.headers), int(time.time() * 1000),
        "paystream.commands", 0, next(_offsets),
    )  # fmt: skip


async def test_a_taxed_payment_let_through_before_the_narrowing_finishes(
    harness: Harness,
) -> None:
    """Parked after its provider charged it (answers lost), then `tax` narrowed out: its
    re-drive records the charge with its tax, not a rejection."""
    t = new_tenant_id()
    lost = {"lose_response_first": {f"pse:{t}:payment:p1": 3}}
    harness.add_tenant(t, gateway_options=lost)
    await _rate(harness, t)
    calc = await _calculated(harness, t)
    body = {"amount": 1200, "currency": "GBP", "payment_method_token": "pm_card_visa",
            "payment_id": "p1", "tax_calculation_id": calc["id"]}  # fmt: skip
    emits = await harness.processor.process(_record(t, body))
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    assert harness.idempotency[f"{t}:c1"]["state"] == "parked"
    _narrow(harness, t, **lost)
    out = outcome_of(harness.settings, await harness.processor.process(_record(t, body)))
    assert out is not None and kind(out) == "payment.succeeded", out and data(out)
    assert data(out)["object"]["amount_tax"] == 200
    charges = [e for e in await _gateway(harness, t).effects() if e.kind == "charge"]
    assert len(charges) == 1
