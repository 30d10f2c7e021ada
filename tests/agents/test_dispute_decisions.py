"""Disputes end to end (review h68ah): the network's decision on a dispute never reached
paystream (a succeeded payment could not be read back, and a dispute once recorded was
never read again), so `won` and `lost` by the network were never recorded; the simulator
took evidence over Stripe's combined 150,000 characters."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio
USD_1000 = {"amount": 1000, "currency": "USD"}


def _gateway(h: Harness, tenant: str) -> SimulatorGateway:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


async def _disputed(h: Harness, t: str) -> dict[str, Any]:
    paid = await h.send(
        "payment.create",
        t,
        {"payment_id": "p1", **USD_1000, "payment_method_token": "pm_card_createDispute"},
    )
    assert kind(paid) == "payment.succeeded", data(paid)
    related: dict[str, Any] = data(paid)["related"][0]
    return related


# ---- F1: a dispute's decision never reaches the tables or the ledger ---------------------


@pytest.mark.parametrize("won", [True, False])
async def test_the_networks_decision_on_a_dispute_can_be_read_back(
    harness: Harness, won: bool
) -> None:
    """Evidence submitted, the card network decides at the provider. Nothing in
    paystream can read that back: payment.refresh refuses a succeeded payment
    (state_machines: succeeded allows only refund), _new_dispute skips a payment that
    already names a dispute, there is no dispute.refresh, and dispute webhooks are not
    followed. The dispute stays `under_review` in the tables and the ledger for ever
    (until retention drops it), so neither `won` nor a network `lost` is ever
    recorded: chargebacks cannot be reconciled from paystream's data."""
    t = harness.add_tenant()
    dispute = await _disputed(harness, t)
    answered = await harness.send(
        "dispute.submit_evidence",
        t,
        {"dispute_id": dispute["entity_id"], "evidence": {"uncategorized_text": "delivered"}},
    )
    assert data(answered)["object"]["status"] == "under_review"
    await _gateway(harness, t).resolve_dispute(dispute["object"]["provider_dispute_id"], won=won)
    # Some command must read it back; the payment's refresh is the only read there is.
    read = await harness.send("payment.refresh", t, {"payment_id": "p1"})
    assert kind(read) != "command.rejected", data(read)
    held = harness.tables.disputes[f"{t}:{dispute['entity_id']}"]
    assert held["status"] == ("won" if won else "lost")


# ---- F3: the simulator takes evidence Stripe refuses -------------------------------------


async def test_the_simulator_refuses_evidence_over_stripes_combined_limit(
    redis_url: str,
) -> None:
    """Stripe: "The combined character count of all fields is limited to 150,000."
    Each field's 20,000 is checked by the command model; the total nowhere. With
    PAYSTREAM_COMMAND_MAX_BYTES at its documented ceiling (256 KiB) eight full text
    fields (160,000 characters) pass paystream and the simulator, which Stripe refuses:
    a tenant tested on the simulator learns it only on a live dispute, near its
    deadline."""
    async with running_harness(redis_url, command_max_bytes=256 * 1024) as harness:
        t = harness.add_tenant()
        dispute = await _disputed(harness, t)
        fields = [
            "access_activity_log",
            "cancellation_policy_disclosure",
            "cancellation_rebuttal",
            "duplicate_charge_explanation",
            "product_description",
            "refund_policy_disclosure",
            "refund_refusal_explanation",
            "uncategorized_text",
        ]
        out = await harness.send(
            "dispute.submit_evidence",
            t,
            {
                "dispute_id": dispute["entity_id"],
                "evidence": {f: "x" * 20_000 for f in fields},
                "submit": False,
            },
        )
        assert kind(out) == "command.rejected", data(out)["object"]["status"]
        assert data(out)["reason"] == "validation_error"
