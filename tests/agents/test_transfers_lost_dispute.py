"""A lost dispute lowers what is left to transfer from its payment (review h79 L6): the
cardholder got that money back, so a transfer naming the payment (Stripe's
source_transaction) may move at most captured - refunded - charged back - transferred.
On the real simulator: a payment disputed (pm_card_createDispute), the dispute accepted
(closed lost), then a transfer of more than is left refused before any provider call,
and one of what is left made. A dispute still open lowers it too (Stripe withdrew the
disputed amount as it opened: review h80r F1); one won lowers nothing."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind, simulator_of
from tests.agents.test_transfers import _account, _rejected, _tr, _transfers

pytestmark = pytest.mark.asyncio


async def _disputed(h: Harness, t: str, amount: int = 10_000) -> tuple[str, dict[str, Any]]:
    body = {"amount": amount, "currency": "USD", "payment_method_token": "pm_card_createDispute"}
    paid = await h.send("payment.create", t, body)
    assert kind(paid) == "payment.succeeded", data(paid)
    dispute = dict(data(paid)["related"][0])
    assert dispute["entity_type"] == "dispute", dispute
    return str(data(paid)["object"]["id"]), dispute


async def test_a_lost_dispute_is_not_transferred(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    payment_id, dispute = await _disputed(harness, t)
    lost_amount = int(dispute["object"]["amount"])
    assert lost_amount == 10_000, dispute
    closed = await harness.send("dispute.accept", t, {"dispute_id": dispute["entity_id"]})
    assert kind(closed) == "dispute.closed", data(closed)
    assert data(closed)["object"]["status"] == "lost", data(closed)
    # 10 000 captured, all of it charged back: nothing left to move.
    over = await harness.send("transfer.create", t, _tr(acct["id"], 1, payment_id=payment_id))
    message = _rejected(over, "validation_error")
    assert "(0.00 USD:" in message and "100.00 USD charged back (dispute lost)" in message
    assert await _transfers(harness, t) == []


async def test_a_partial_dispute_lost_leaves_the_rest(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    payment_id, dispute = await _disputed(harness, t)
    # A dispute of part of the charge (as the network may raise): 4 000 of 10 000.
    key = f"{t}:{dispute['entity_id']}"
    harness.tables.disputes[key] = {**harness.tables.disputes[key], "amount": 4_000}
    closed = await harness.send("dispute.accept", t, {"dispute_id": dispute["entity_id"]})
    assert data(closed)["object"]["status"] == "lost", data(closed)
    refunded = await harness.send("refund.create", t, {"payment_id": payment_id, "amount": 1})
    assert kind(refunded) == "command.rejected", data(refunded)  # (charged back: no refund)
    # 10 000 - 4 000 lost: 6 000 left; 6 001 refused, 6 000 moved.
    over = await harness.send("transfer.create", t, _tr(acct["id"], 6_001, payment_id=payment_id))
    assert "(60.00 USD:" in _rejected(over, "validation_error")
    made = await harness.send("transfer.create", t, _tr(acct["id"], 6_000, payment_id=payment_id))
    assert kind(made) == "transfer.created", data(made)
    assert await _transfers(harness, t) == [("transfer.created", 6_000)]


async def test_an_open_dispute_withholds_its_amount(harness: Harness) -> None:
    # Stripe takes the disputed amount from the platform's balance as the dispute opens
    # (its "Chargeback withdrawal"), and gives it back only if won: until then a transfer
    # of it would move money the platform no longer holds (review h80r F1).
    t = harness.add_tenant()
    acct = await _account(harness, t)
    payment_id, dispute = await _disputed(harness, t)
    key = f"{t}:{dispute['entity_id']}"
    assert harness.tables.disputes[key]["status"] == "needs_response"
    harness.tables.disputes[key] = {**harness.tables.disputes[key], "amount": 4_000}
    over = await harness.send("transfer.create", t, _tr(acct["id"], 6_001, payment_id=payment_id))
    message = _rejected(over, "validation_error")
    assert "(60.00 USD:" in message and "withdrawn by its open dispute" in message, message
    made = await harness.send("transfer.create", t, _tr(acct["id"], 6_000, payment_id=payment_id))
    assert kind(made) == "transfer.created", data(made)
    assert await _transfers(harness, t) == [("transfer.created", 6_000)]


async def test_a_dispute_won_lowers_nothing(harness: Harness) -> None:
    t = harness.add_tenant()
    acct = await _account(harness, t)
    payment_id, dispute = await _disputed(harness, t)
    gateway = harness.pool.get(Tenant.model_validate(harness.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    await gateway.resolve_dispute(dispute["object"]["provider_dispute_id"], won=True)
    read = await harness.send("payment.refresh", t, {"payment_id": payment_id})
    assert kind(read) != "command.rejected", data(read)
    assert harness.tables.disputes[f"{t}:{dispute['entity_id']}"]["status"] == "won"
    made = await harness.send("transfer.create", t, _tr(acct["id"], 10_000, payment_id=payment_id))
    assert kind(made) == "transfer.created", data(made)
    assert [e.kind for e in await simulator_of(harness, t).effects()].count("transfer.created") == 1
