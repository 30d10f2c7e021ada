"""A destination charge's application fee is recorded as its platform collects it
(review h79r_a L2): canceled or declined with nothing captured, 0 in its record and its
outcome (which the ledger's payments row copies), not the fee named; one declined, then
paid with another card (its provider kept it open), takes the provider's fee again."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.agents.handlers import entity_key
from paystream.gateways.stripe import mapping as stripe_mapping
from tests.agents.harness import Harness, data, kind
from tests.agents.test_destination_charges import _account, _money, _pay
from tests.agents.test_payment_refresh import _browser_sets, _simulator

pytestmark = pytest.mark.asyncio


def _fee(h: Harness, t: str, out: Any, payment_id: str) -> tuple[int, int | None, int | None]:
    obj = data(out)["object"]
    stored = h.tables.payments[entity_key(t, payment_id)]
    return obj["amount_captured"], obj["application_fee_amount"], stored["application_fee_amount"]


async def test_a_canceled_destination_charge_keeps_no_fee(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    body = _pay(acct["id"], application_fee_amount=4_000, capture="manual", payment_id="p1")
    held = await harness.send("payment.create", t, body)
    assert kind(held) == "payment.authorized", data(held)
    assert _fee(harness, t, held, "p1") == (0, 4_000, 4_000)  # (to be collected)
    out = await harness.send("payment.cancel", t, {"payment_id": "p1"})
    assert kind(out) == "payment.canceled", data(out)
    assert _fee(harness, t, out, "p1") == (0, 0, 0)
    assert await _money(harness, t) == [("authorization", 10_000), ("void", 10_000)]  # (no fee)


async def test_a_declined_destination_charge_keeps_no_fee(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    body = _pay(
        acct["id"], application_fee_amount=4_000, payment_id="p2",
        payment_method_token="pm_card_chargeDeclined",
    )  # fmt: skip
    out = await harness.send("payment.create", t, body)
    assert kind(out) == "payment.failed", data(out)
    assert _fee(harness, t, out, "p2") == (0, 0, 0)


async def test_declined_then_paid_with_another_card_its_fee_is_collected(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    body = _pay(
        acct["id"], application_fee_amount=4_000, payment_id="p3",
        payment_method_token="pm_card_authenticationRequired",
    )  # fmt: skip
    made = await harness.send("payment.create", t, body)
    assert kind(made) == "payment.requires_action", data(made)
    provider_id = str(harness.tables.payments[entity_key(t, "p3")]["provider_payment_id"])
    await _simulator(harness, t).complete_authentication(provider_id, succeed=False)
    failed = await harness.send("payment.refresh", t, {"payment_id": "p3"})
    assert kind(failed) == "payment.failed", data(failed)
    assert _fee(harness, t, failed, "p3") == (0, 0, 0)
    await _browser_sets(
        _simulator(harness, t), provider_id, "card2", status="succeeded",
        amount_captured=10_000, failure_code=None, failure_message=None,
    )  # fmt: skip
    paid = await harness.send("payment.refresh", t, {"payment_id": "p3"})
    assert kind(paid) == "payment.succeeded", data(paid)
    assert _fee(harness, t, paid, "p3") == (10_000, 4_000, 4_000)


async def test_stripes_payment_intent_tells_its_fee() -> None:
    pi = {"id": "pi_1", "status": "succeeded", "amount": 10_000, "currency": "usd",
          "amount_received": 10_000, "application_fee_amount": 4_000}  # fmt: skip
    assert stripe_mapping.payment(pi).application_fee_amount == 4_000
    assert (
        stripe_mapping.payment({**pi, "application_fee_amount": None}).application_fee_amount
        is None
    )
