"""A refund parked with its answer lost was counted twice on its payment when a
payment.refresh (allowed on a succeeded payment while its dispute is open) read the
provider's refunded total first, and the re-drive then added it again (review h68al)."""

from __future__ import annotations

import pytest

from paystream.client import build_command
from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio


async def test_a_parked_refund_read_back_by_a_payment_refresh_is_counted_once(
    harness: Harness,
) -> None:
    h = harness
    t = h.add_tenant()
    # The refund's answers are lost for every attempt of its first delivery.
    h.tenants[t]["gateway_options"] = {"lose_response_first": {f"pse:{t}:refund:rf-d": 3}}
    sim = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(sim, SimulatorGateway)
    paid = await h.send(
        "payment.create", t,
        {"amount": 1000, "currency": "USD", "payment_id": "pay-d",
         "payment_method_token": "pm_card_createDispute"},
    )  # fmt: skip
    assert kind(paid) == "payment.succeeded", data(paid)
    [dispute] = data(paid)["related"]
    # The network decides for the merchant; paystream has not read it back yet.
    await sim.resolve_dispute(dispute["object"]["provider_dispute_id"], won=True)
    # A goodwill partial refund: the provider refunds 3.00, its answer is lost: parked.
    refund = build_command(
        "refund.create", t, {"payment_id": "pay-d", "refund_id": "rf-d", "amount": 300},
        command_id="refund-d",
    )  # fmt: skip
    emits, out = await h.send_event(refund)
    assert out is None, data(out)
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    # The payment read back (allowed while its dispute is open here): the provider's
    # amount_refunded holds the parked refund's 3.00 (and the dispute is read as won).
    read = await h.send("payment.refresh", t, {"payment_id": "pay-d"})
    assert kind(read) == "payment.succeeded", data(read)
    # The parked refund re-driven (`paystream dlq replay`): answered as it was.
    _, again = await h.send_event(refund)
    assert again is not None and kind(again) == "refund.succeeded", again and data(again)
    refunds = [e.amount for e in await sim.effects() if e.kind == "refund"]
    assert refunds == [300]  # one refund of 3.00 at the provider
    # ... and 3.00 refunded here, not 6.00 (the customer's other 7.00 stays refundable).
    assert h.tables.payments[f"{t}:pay-d"]["amount_refunded"] == 300
