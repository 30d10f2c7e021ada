"""A taxed payment that collects nothing records `amount_tax` 0, as README Tax defines
it (review h74t F2: a declined one kept its calculation's whole tax in its record, its
`payment.failed` outcome, its ledger row and its events, so anyone summing `amount_tax`
overstated the tax collected by every declined retry). A failed payment its provider
keeps open (3-D Secure failed: the customer may pay it with another card) takes its
calculation's tax again once read back paid."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.agents.handlers import entity_key
from tests.agents.harness import Harness, data, kind
from tests.agents.test_payment_refresh import _browser_sets, _simulator
from tests.agents.test_tax_charges import _calc, _pay, _rate

pytestmark = pytest.mark.asyncio


async def _taxed(h: Harness) -> tuple[str, dict[str, Any]]:
    t = h.add_tenant()
    await _rate(h, t)
    calc = await _calc(h, t, 1000, "GBP", ["vat"])
    assert (calc["amount_tax"], calc["amount_total"]) == (200, 1200), calc
    return t, calc


async def test_a_declined_taxed_payment_collects_no_tax(harness: Harness) -> None:
    t, calc = await _taxed(harness)
    out = await _pay(
        harness, t, calc, payment_id="p1", payment_method_token="pm_card_chargeDeclined"
    )
    assert kind(out) == "payment.failed", data(out)
    obj: dict[str, Any] = data(out)["object"]
    assert (obj["amount_captured"], obj["amount_tax"]) == (0, 0), obj
    stored = harness.tables.payments[entity_key(t, "p1")]
    assert (stored["amount_tax"], stored["tax_calculation_id"]) == (0, calc["id"]), stored
    # The calculation keeps its own figure, and a retry with another card names it again.
    retry = await _pay(harness, t, calc, payment_id="p2")
    assert kind(retry) == "payment.succeeded", data(retry)
    assert data(retry)["object"]["amount_tax"] == 200


async def _failed_3ds(h: Harness) -> tuple[str, str, dict[str, Any]]:
    t, calc = await _taxed(h)
    made = await _pay(
        h, t, calc, payment_id="p3", payment_method_token="pm_card_authenticationRequired"
    )
    assert kind(made) == "payment.requires_action", data(made)
    assert data(made)["object"]["amount_tax"] == 200  # (to be collected)
    provider_id = str(h.tables.payments[entity_key(t, "p3")]["provider_payment_id"])
    await _simulator(h, t).complete_authentication(provider_id, succeed=False)
    failed = await h.send("payment.refresh", t, {"payment_id": "p3"})
    assert kind(failed) == "payment.failed", data(failed)
    assert data(failed)["object"]["amount_tax"] == 0, data(failed)
    return t, provider_id, calc


async def test_a_failed_3ds_payment_collects_no_tax_until_paid_with_another_card(
    harness: Harness,
) -> None:
    t, provider_id, _ = await _failed_3ds(harness)
    again = await harness.send("payment.refresh", t, {"payment_id": "p3"})
    assert data(again)["object"]["amount_tax"] == 0
    await _browser_sets(
        _simulator(harness, t), provider_id, "card2", status="succeeded",
        amount_captured=1200, failure_code=None, failure_message=None,
    )  # fmt: skip
    paid = await harness.send("payment.refresh", t, {"payment_id": "p3"})
    assert kind(paid) == "payment.succeeded", data(paid)
    assert data(paid)["object"]["amount_tax"] == 200, data(paid)


async def test_paid_after_its_calculation_was_swept_its_tax_is_unknown(
    harness: Harness,
) -> None:
    """As a create let through after its calculation was swept: None, not a guess."""
    t, provider_id, calc = await _failed_3ds(harness)
    del harness.tables.tax_calculations[entity_key(t, calc["id"])]
    await _browser_sets(
        _simulator(harness, t), provider_id, "card2", status="succeeded",
        amount_captured=1200, failure_code=None, failure_message=None,
    )  # fmt: skip
    paid = await harness.send("payment.refresh", t, {"payment_id": "p3"})
    assert kind(paid) == "payment.succeeded", data(paid)
    obj = data(paid)["object"]
    assert obj.get("amount_tax") is None and obj["tax_calculation_id"] == calc["id"], obj
