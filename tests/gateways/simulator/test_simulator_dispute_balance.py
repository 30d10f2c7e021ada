"""A dispute moves the simulator's balance as Stripe's does: its amount and the dispute fee
withdrawn from available as it opens (below zero if need be), the amount given back if
won (the fee kept: Stripe's disputes docs), nothing more if lost or accepted; each once,
however often the call is sent again or the payment read."""

from __future__ import annotations

import orjson
import pytest
import redis.asyncio as aredis

from paystream.gateways.base import (
    AcceptDispute,
    CaptureMethod,
    CapturePayment,
    CreatePayout,
    CreateRefund,
    RetrieveBalance,
    RetrievePayment,
)
from paystream.gateways.errors import ErrorCode
from paystream.gateways.simulator import SimulatorGateway
from paystream.gateways.simulator.operations import DISPUTE_FEES, dispute_fee
from paystream.money import Money
from tests.gateways.simulator.test_simulator_money_rules import charge, refused, sim

pytestmark = pytest.mark.asyncio
DAY = 24 * 3600
DISPUTE_CARD = "pm_card_createDispute"


async def available(gw: SimulatorGateway, currency: str = "USD") -> tuple[int, int]:
    """(available, pending) in ``currency``."""
    res = await gw.retrieve_balance(RetrieveBalance(), idempotency_key="read")
    found = {b.currency: (b.available, b.pending) for b in res.balances}
    return found.get(currency, (0, 0))


async def settled(gw: SimulatorGateway, amount: int, currency: str = "USD") -> None:
    await gw.create_payment(charge(amount, currency=currency), idempotency_key=f"s{amount}")
    await gw.advance_clock(2 * DAY)


async def money(gw: SimulatorGateway, kind: str) -> list[tuple[int | None, str | None]]:
    return [(e.amount, e.currency) for e in await gw.effects() if e.kind == kind]


async def test_the_fee_table() -> None:
    # Stripe's published dispute (received) fees, minor units; no float anywhere.
    assert DISPUTE_FEES == {"USD": 1500, "EUR": 2000, "GBP": 2000, "JPY": 1500}
    assert all(type(fee) is int for fee in DISPUTE_FEES.values())
    # Elsewhere 15 whole units of the currency (a simulator value, no conversion).
    assert (dispute_fee("CAD"), dispute_fee("KWD"), dispute_fee("KRW")) == (1500, 15000, 15)


async def test_an_opened_dispute_withdraws_its_amount_and_fee_at_once(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    await settled(gw, 10_000)
    assert await available(gw) == (10_000, 0)
    pay = await gw.create_payment(charge(4000, DISPUTE_CARD, "USD"), idempotency_key="p")
    assert pay.dispute is not None and pay.dispute.status == "needs_response"
    assert pay.dispute.amount == Money(amount=4000, currency="USD")
    assert pay.dispute.fee == Money(amount=1500, currency="USD")
    # The capture is pending; the dispute took 40.00 + 15.00 from available.
    assert await available(gw) == (10_000 - 4000 - 1500, 4000)
    assert await money(gw, "dispute.withdrawal") == [(5500, "USD")]
    # A payout above what is left is refused (the money under dispute cannot leave).
    over = CreatePayout(amount=Money(amount=4501, currency="USD"))
    err = await refused(gw.create_payout(over, idempotency_key="po1"))
    assert err.code is ErrorCode.BALANCE_INSUFFICIENT
    fits = CreatePayout(amount=Money(amount=4500, currency="USD"))
    assert (await gw.create_payout(fits, idempotency_key="po2")).amount.amount == 4500
    assert await available(gw) == (0, 4000)


async def test_sent_again_or_read_it_withdraws_once(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    first = await gw.create_payment(charge(3000, DISPUTE_CARD, "EUR"), idempotency_key="p")
    again = await gw.create_payment(charge(3000, DISPUTE_CARD, "EUR"), idempotency_key="p")
    assert again == first
    read = RetrievePayment(provider_payment_id=first.provider_payment_id)
    for n in range(3):
        now = await gw.retrieve_payment(read, idempotency_key=f"r{n}")
        assert now.dispute == first.dispute
    # Below zero (nothing settled yet), as Stripe's balance goes: EUR 20.00 fee.
    assert await available(gw, "EUR") == (-3000 - 2000, 3000)
    assert await money(gw, "dispute.withdrawal") == [(5000, "EUR")]


async def test_a_dispute_opened_at_capture_withdraws_what_was_captured_once(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """The simulator's rule: the disputed amount is the amount captured (a partial
    capture's part), withdrawn in the capture's commit; the capture sent again moves
    nothing more."""
    gw = sim(redis_client, tenant_id)
    auth = await gw.create_payment(
        charge(10_000, DISPUTE_CARD, "USD", capture_method=CaptureMethod.MANUAL),
        idempotency_key="a",
    )
    assert auth.dispute is None and await available(gw) == (0, 0)
    cap = CapturePayment(provider_payment_id=auth.provider_payment_id, amount=6000)
    done = await gw.capture_payment(cap, idempotency_key="c")
    assert done.dispute is not None and done.dispute.amount.amount == 6000  # type: ignore[union-attr]
    assert await gw.capture_payment(cap, idempotency_key="c") == done
    assert await available(gw) == (-6000 - 1500, 6000)
    assert await money(gw, "dispute.withdrawal") == [(7500, "USD")]


async def test_won_gives_the_amount_back_not_the_fee(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    await settled(gw, 10_000)
    pay = await gw.create_payment(charge(4000, DISPUTE_CARD, "USD"), idempotency_key="p")
    assert pay.dispute is not None
    dispute_id = pay.dispute.provider_dispute_id
    won = await gw.resolve_dispute(dispute_id, won=True)
    assert won.status == "won" and won.fee == Money(amount=1500, currency="USD")
    assert await available(gw) == (10_000 - 1500, 4000)
    assert await gw.resolve_dispute(dispute_id, won=True) == won  # (its key: once)
    assert await available(gw) == (10_000 - 1500, 4000)
    assert await money(gw, "dispute.reinstated") == [(4000, "USD")]
    # A won dispute's payment may be refunded, in part: that takes from available too.
    refund = CreateRefund(provider_payment_id=pay.provider_payment_id, amount=1000)
    await gw.create_refund(refund, idempotency_key="r")
    assert await available(gw) == (10_000 - 1500 - 1000, 4000)


async def test_lost_or_accepted_moves_nothing_more(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    await settled(gw, 20_000)
    lost = await gw.create_payment(charge(4000, DISPUTE_CARD, "USD"), idempotency_key="p1")
    accepted = await gw.create_payment(charge(3000, DISPUTE_CARD, "USD"), idempotency_key="p2")
    assert lost.dispute is not None and accepted.dispute is not None
    after_opening = 20_000 - (4000 + 1500) - (3000 + 1500)
    assert await available(gw) == (after_opening, 7000)
    await gw.resolve_dispute(lost.dispute.provider_dispute_id, won=False)
    req = AcceptDispute(provider_dispute_id=accepted.dispute.provider_dispute_id)
    closed = await gw.accept_dispute(req, idempotency_key="acc")
    assert closed.status == "lost"
    assert await gw.accept_dispute(req, idempotency_key="acc") == closed
    assert await available(gw) == (after_opening, 7000)
    assert await money(gw, "dispute.reinstated") == []


async def test_a_dispute_stored_before_the_fee_is_charged_back_when_lost(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """One opened before the simulator withdrew at opening (stored without a fee) took
    nothing then: lost, its amount is taken as before, and never a fee it was not
    charged; won, nothing is given back that was never taken."""
    gw = sim(redis_client, tenant_id)
    await settled(gw, 10_000)
    old = []
    for n in range(2):
        pay = await gw.create_payment(charge(2000, DISPUTE_CARD, "USD"), idempotency_key=f"p{n}")
        assert pay.dispute is not None
        dispute_id = pay.dispute.provider_dispute_id
        key = gw._store.object_key(dispute_id)
        stored = await gw._store.read(dispute_id)
        assert stored is not None
        del stored["fee"]
        await redis_client.set(key, orjson.dumps(stored))
        old.append(dispute_id)
    # (the withdrawals made by this release stand: 2 x (20.00 + 15.00))
    base = 10_000 - 2 * 3500
    assert await available(gw) == (base, 4000)
    assert (await gw.resolve_dispute(old[0], won=False)).fee is None
    assert await available(gw) == (base - 2000, 4000)
    await gw.resolve_dispute(old[1], won=True)
    assert await available(gw) == (base - 2000, 4000)
