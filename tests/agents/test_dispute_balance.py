"""A dispute's money through the pipeline, on the real simulator, as Stripe moves it: the
disputed amount and the dispute fee leave the available balance as the dispute opens
(`balance.retrieve` shows it, and a payout of it is refused `balance_insufficient`); a
won dispute gives the amount back, not the fee; a lost or accepted one moves nothing
more; a redelivery or a refresh never withdraws twice."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.client import build_command
from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio
DAY = 24 * 3600
FEE = 1500  # (Stripe US's dispute fee, USD 15.00)


def _gateway(h: Harness, tenant: str) -> SimulatorGateway:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


async def _available(h: Harness, t: str) -> tuple[int, int]:
    out = await h.send("balance.retrieve", t, {})
    assert kind(out) == "balance.retrieved", data(out)
    found = {b["currency"]: (b["available"], b["pending"]) for b in data(out)["balances"]}
    return found.get("USD", (0, 0))


async def _pay(h: Harness, t: str, amount: int, token: str = "pm_card_visa") -> Any:
    body = {"amount": amount, "currency": "USD", "payment_method_token": token}
    out = await h.send("payment.create", t, body)
    assert kind(out) == "payment.succeeded", data(out)
    return out


async def _disputed(h: Harness, t: str, amount: int) -> tuple[str, dict[str, Any]]:
    paid = await _pay(h, t, amount, "pm_card_createDispute")
    [dispute] = data(paid)["related"]
    assert dispute["entity_type"] == "dispute", dispute
    return str(data(paid)["object"]["id"]), dict(dispute)


async def _settled(h: Harness, t: str, amount: int) -> None:
    await _pay(h, t, amount)
    await _gateway(h, t).advance_clock(2 * DAY)


async def test_an_open_dispute_cannot_be_paid_out(harness: Harness) -> None:
    t = harness.add_tenant()
    await _settled(harness, t, 10_000)
    await _disputed(harness, t, 4000)
    assert await _available(harness, t) == (10_000 - 4000 - FEE, 4000)
    body = {"amount": 10_000 - 4000 - FEE + 1, "currency": "USD", "payout_id": "po1"}
    over = await harness.send("payout.create", t, body)
    assert kind(over) == "command.rejected", data(over)
    assert data(over)["reason"] == "balance_insufficient", data(over)
    fits = await harness.send("payout.create", t, {**body, "amount": 4500, "payout_id": "po2"})
    assert kind(fits) == "payout.created", data(fits)
    assert await _available(harness, t) == (0, 4000)


async def test_redelivered_or_refreshed_it_withdraws_once(harness: Harness) -> None:
    t = harness.add_tenant()
    body = {
        "amount": 2500,
        "currency": "USD",
        "payment_method_token": "pm_card_createDispute",
        "payment_id": "pay1",
    }
    await harness.assert_redelivered_alike(build_command("payment.create", t, body))
    for _ in range(2):
        read = await harness.send("payment.refresh", t, {"payment_id": "pay1"})
        assert kind(read) == "payment.succeeded", data(read)
    # The same payment_id under a new command id: refused, the payment exists already.
    again = await harness.send("payment.create", t, body)
    assert kind(again) == "command.rejected" and data(again)["reason"] == "invalid_state"
    assert await _available(harness, t) == (-2500 - FEE, 2500)
    withdrawals = [e for e in await _gateway(harness, t).effects() if e.kind.startswith("dispute.")]
    assert [(e.kind, e.amount) for e in withdrawals] == [("dispute.withdrawal", 2500 + FEE)]


async def test_won_gives_the_amount_back_and_keeps_the_fee(harness: Harness) -> None:
    t = harness.add_tenant()
    await _settled(harness, t, 10_000)
    payment_id, dispute = await _disputed(harness, t, 4000)
    await _gateway(harness, t).resolve_dispute(dispute["object"]["provider_dispute_id"], won=True)
    for _ in range(2):  # (read twice: given back once)
        read = await harness.send("payment.refresh", t, {"payment_id": payment_id})
        assert kind(read) == "payment.succeeded", data(read)
    key = f"{t}:{dispute['entity_id']}"
    assert harness.tables.disputes[key]["status"] == "won"
    assert await _available(harness, t) == (10_000 - FEE, 4000)


async def test_lost_or_accepted_takes_nothing_more(harness: Harness) -> None:
    t = harness.add_tenant()
    await _settled(harness, t, 20_000)
    lost_payment, lost = await _disputed(harness, t, 4000)
    _, accepted = await _disputed(harness, t, 3000)
    after_opening = 20_000 - (4000 + FEE) - (3000 + FEE)
    assert await _available(harness, t) == (after_opening, 7000)
    await _gateway(harness, t).resolve_dispute(lost["object"]["provider_dispute_id"], won=False)
    read = await harness.send("payment.refresh", t, {"payment_id": lost_payment})
    assert kind(read) == "payment.succeeded", data(read)
    closed = await harness.send("dispute.accept", t, {"dispute_id": accepted["entity_id"]})
    assert kind(closed) == "dispute.closed", data(closed)
    # Sent again (another command id): refused, it is closed; nothing moves.
    again = await harness.send("dispute.accept", t, {"dispute_id": accepted["entity_id"]})
    assert kind(again) == "command.rejected" and data(again)["reason"] == "invalid_state"
    assert await _available(harness, t) == (after_opening, 7000)
