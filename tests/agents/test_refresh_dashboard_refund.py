"""A payment captured and partly refunded in the provider's dashboard, first read back as
succeeded by payment.refresh, recorded nothing refunded once the refresh kept paystream's own
count (review h68am): paystream's count is kept only for a payment already succeeded here."""

from __future__ import annotations

import pytest

from paystream.gateways import base as gw
from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio


async def test_a_dashboard_refund_read_by_the_first_refresh_of_a_captured_payment_counts(
    harness: Harness,
) -> None:
    h = harness
    t = h.add_tenant()
    sim = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(sim, SimulatorGateway)
    auth = await h.send(
        "payment.create", t,
        {"amount": 1000, "currency": "USD", "payment_id": "pay-m", "capture": "manual",
         "payment_method_token": "pm_card_visa"},
    )  # fmt: skip
    assert kind(auth) == "payment.authorized", data(auth)
    ppid = h.tables.payments[f"{t}:pay-m"]["provider_payment_id"]
    # The merchant captures in the provider's dashboard and refunds 3.00 there.
    await sim.capture_payment(gw.CapturePayment(provider_payment_id=ppid), idempotency_key="dash-1")
    await sim.create_refund(
        gw.CreateRefund(provider_payment_id=ppid, amount=300), idempotency_key="dash-2"
    )
    # The webhook's payment.refresh (payment_intent.succeeded) reads it back.
    read = await h.send("payment.refresh", t, {"payment_id": "pay-m"})
    assert kind(read) == "payment.succeeded", data(read)
    assert data(read)["object"]["amount_captured"] == 1000
    # The provider has refunded 3.00 of it: so must the record (and the ledger) say.
    assert h.tables.payments[f"{t}:pay-m"]["amount_refunded"] == 300
