"""Simulator rules on amounts, owners and states that move money (mutation round 5)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest
import redis.asyncio as aredis

from paystream.gateways.base import (
    AttachPaymentMethod,
    CancelPayment,
    CaptureMethod,
    CapturePayment,
    CreateCustomer,
    CreatePayment,
    CreateRefund,
    GatewayContext,
    PaymentStatus,
    SubmitDisputeEvidence,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.simulator import SimulatorGateway
from paystream.money import Money
from paystream.settings import load_settings

SETTINGS = load_settings()


def sim(redis: aredis.Redis, tenant: str) -> SimulatorGateway:
    ctx = GatewayContext(tenant_id=tenant, provider="simulator")
    return SimulatorGateway.from_context(ctx, GatewayDeps(settings=SETTINGS, redis=redis))


def charge(amount: int = 2000, token: str = "pm_card_visa", currency: str = "EUR", **kw: Any):
    return CreatePayment(
        amount=Money(amount=amount, currency=currency), provider_payment_method_id=token, **kw
    )


async def refused(coro: Awaitable[object]) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await coro
    return info.value


async def money_effects(gw: SimulatorGateway) -> list[tuple[str, int | None]]:
    return [(e.kind, e.amount) for e in await gw.effects() if e.amount is not None]


async def test_a_saved_card_cannot_be_charged_for_another_customer(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    alice = await gw.create_customer(CreateCustomer(), idempotency_key="c1")
    mallory = await gw.create_customer(CreateCustomer(), idempotency_key="c2")
    pm = await gw.attach_payment_method(
        AttachPaymentMethod(provider_customer_id=alice.provider_customer_id, token="pm_card_visa"),
        idempotency_key="a1",
    )
    for i, customer in enumerate((mallory.provider_customer_id, None)):
        err = await refused(
            gw.create_payment(
                charge(token=pm.provider_payment_method_id, provider_customer_id=customer),
                idempotency_key=f"p{i}",
            )
        )
        assert err.code is ErrorCode.INVALID_REQUEST
    assert await money_effects(gw) == []


async def test_a_zero_charge_is_refused_in_a_currency_without_a_minimum(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    for currency in ("IDR", "KWD", "XOF"):  # no entry in MINIMUM_CHARGE
        err = await refused(
            gw.create_payment(charge(0, currency=currency), idempotency_key=currency)
        )
        assert err.code is ErrorCode.INVALID_REQUEST
    assert await money_effects(gw) == []


async def test_a_zero_capture_is_refused_and_the_hold_stays(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    pay = await gw.create_payment(charge(capture_method=CaptureMethod.MANUAL), idempotency_key="p")
    req = CapturePayment(provider_payment_id=pay.provider_payment_id, amount=0)
    err = await refused(gw.capture_payment(req, idempotency_key="cap"))
    assert err.code is ErrorCode.INVALID_REQUEST
    full = CapturePayment(provider_payment_id=pay.provider_payment_id)
    assert (await gw.capture_payment(full, idempotency_key="cap2")).amount_captured == 2000


async def test_refunds_are_bounded_by_what_was_captured_not_authorised(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    pay = await gw.create_payment(charge(capture_method=CaptureMethod.MANUAL), idempotency_key="p")
    pid = pay.provider_payment_id
    await gw.capture_payment(
        CapturePayment(provider_payment_id=pid, amount=800), idempotency_key="c"
    )
    err = await refused(
        gw.create_refund(CreateRefund(provider_payment_id=pid, amount=2000), idempotency_key="r1")
    )
    assert err.code is ErrorCode.INVALID_REQUEST
    rest = await gw.create_refund(CreateRefund(provider_payment_id=pid), idempotency_key="r2")
    assert rest.amount.amount == 800
    assert await money_effects(gw) == [("authorization", 2000), ("capture", 800), ("refund", 800)]


async def test_no_refund_while_the_dispute_is_under_review(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    pay = await gw.create_payment(charge(token="pm_card_createDispute"), idempotency_key="p")
    assert pay.dispute is not None
    review = await gw.submit_dispute_evidence(
        SubmitDisputeEvidence(
            provider_dispute_id=pay.dispute.provider_dispute_id,
            evidence={"uncategorized_text": "delivered"},
        ),
        idempotency_key="ev",
    )
    assert review.status == "under_review"
    req = CreateRefund(provider_payment_id=pay.provider_payment_id)
    err = await refused(gw.create_refund(req, idempotency_key="r"))
    assert err.code is ErrorCode.INVALID_STATE
    # (No refund: the charge, and the dispute's withdrawal of its amount and fee.)
    assert [k for k, _ in await money_effects(gw)] == ["charge", "dispute.withdrawal"]


async def test_authentication_cannot_complete_a_declined_payment(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """A declined PaymentIntent is not awaiting 3-D Secure: completing it must not charge."""
    gw = sim(redis_client, tenant_id)
    declined = await refused(
        gw.create_payment(charge(token="pm_card_chargeDeclined"), idempotency_key="p")
    )
    assert declined.provider_payment_id is not None
    err = await refused(gw.complete_authentication(declined.provider_payment_id))
    assert err.code is ErrorCode.INVALID_STATE
    assert await money_effects(gw) == []


async def test_canceling_a_payment_awaiting_authentication_voids_nothing(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    pay = await gw.create_payment(
        charge(token="pm_card_authenticationRequired"), idempotency_key="p"
    )
    assert pay.status is PaymentStatus.REQUIRES_ACTION
    res = await gw.cancel_payment(
        CancelPayment(provider_payment_id=pay.provider_payment_id), idempotency_key="x"
    )
    assert res.status is PaymentStatus.CANCELED
    assert await money_effects(gw) == []  # nothing was authorised, so nothing is voided


async def test_a_used_key_sent_with_refused_parameters_is_an_idempotency_error(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    gw = sim(redis_client, tenant_id)
    await gw.create_payment(charge(), idempotency_key="k")
    err = await refused(gw.create_payment(charge(0), idempotency_key="k"))
    assert err.code is ErrorCode.IDEMPOTENCY_ERROR


async def test_a_record_about_to_expire_is_not_known(
    redis_client: aredis.Redis, tenant_id: str
) -> None:
    """knows_request promises the key is kept an hour more: one expiring sooner is not."""
    gw = sim(redis_client, tenant_id)
    req = charge()
    await gw.create_payment(req, idempotency_key="k")
    assert await gw.knows_request("create_payment", req, idempotency_key="k") is True
    await redis_client.pexpire(f"sim:{{{tenant_id}}}:idem:k", 60_000)
    assert await gw.knows_request("create_payment", req, idempotency_key="k") is False
