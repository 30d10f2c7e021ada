"""Stripe gateway: every mutating call carries the key; proxy 5xx retried; refund and
payment statuses folded right (mutation round 5)."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.base import (
    AcceptDispute,
    AttachPaymentMethod,
    CancelPayment,
    CapturePayment,
    CreateCustomer,
    CreateRefund,
    DetachPaymentMethod,
    PaymentStatus,
    RefundStatus,
    SubmitDisputeEvidence,
    UpdateCustomer,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from tests.gateways.stripe.test_stripe_transport import DISPUTE, PAY, PI, answer, gateway

CUS = {"id": "cus_1", "object": "customer"}
PM = {"id": "pm_1", "object": "payment_method", "customer": "cus_1", "card": {}}
REFUND = {"id": "re_1", "object": "refund", "amount": 700, "currency": "usd",
          "status": "succeeded", "payment_intent": "pi_123"}  # fmt: skip

CALLS: list[tuple[str, Any, dict[str, Any]]] = [
    ("create_customer", CreateCustomer(), CUS),
    ("update_customer", UpdateCustomer(provider_customer_id="cus_1", name="x"), CUS),
    ("attach_payment_method", AttachPaymentMethod(provider_customer_id="cus_1", token="pm_x"), PM),
    ("detach_payment_method", DetachPaymentMethod(provider_payment_method_id="pm_1"), PM),
    ("create_payment", PAY, PI),
    ("capture_payment", CapturePayment(provider_payment_id="pi_123", amount=500), PI),
    ("cancel_payment", CancelPayment(provider_payment_id="pi_123"), PI),
    ("create_refund", CreateRefund(provider_payment_id="pi_123", amount=700), REFUND),
    ("submit_dispute_evidence",
     SubmitDisputeEvidence(provider_dispute_id="dp_1", evidence={"uncategorized_text": "x"}),
     {**DISPUTE, "status": "under_review"}),
    ("accept_dispute", AcceptDispute(provider_dispute_id="dp_1"), {**DISPUTE, "status": "lost"}),
]  # fmt: skip


@pytest.mark.parametrize(("op", "req", "body"), CALLS, ids=[c[0] for c in CALLS])
async def test_every_keyed_call_sends_the_idempotency_key(op: str, req: Any, body: Any) -> None:
    """A retry after a lost answer reuses the key; without it Stripe runs the request
    again (a second refund, a second capture attempt)."""
    gw, fake = gateway(answer(200, body))
    await getattr(gw, op)(req, idempotency_key=f"key-{op}")
    assert [r["headers"].get("Idempotency-Key") for r in fake.requests] == [f"key-{op}"]


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_a_proxys_5xx_or_429_page_is_retried(status: int) -> None:
    """Not Stripe's error object: the request may have been applied; retry under the key."""
    gw, _ = gateway(lambda _req: (status, b"<html>upstream trouble</html>"))
    with pytest.raises(GatewayError) as info:
        await gw.create_payment(PAY, idempotency_key="k")
    assert (info.value.code, info.value.retryable) == (ErrorCode.PROVIDER_UNAVAILABLE, True)


@pytest.mark.parametrize(
    ("stripe_status", "ours"),
    [
        ("succeeded", RefundStatus.SUCCEEDED),
        ("pending", RefundStatus.PENDING),
        ("requires_action", RefundStatus.PENDING),
        ("failed", RefundStatus.FAILED),
        ("canceled", RefundStatus.FAILED),  # no money went back
        ("some_future_status", RefundStatus.PENDING),  # never assumed to have succeeded
    ],
)
async def test_refund_statuses(stripe_status: str, ours: RefundStatus) -> None:
    gw, _ = gateway(answer(200, {**REFUND, "status": stripe_status}))
    res = await gw.create_refund(CreateRefund(provider_payment_id="pi_123"), idempotency_key="k")
    assert res.status is ours


async def test_a_payment_awaiting_a_new_method_failed_with_its_decline_code() -> None:
    pi = {**PI, "status": "requires_payment_method", "amount_received": 0,
          "latest_charge": None,
          "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds",
                                 "message": "Your card has insufficient funds."}}  # fmt: skip
    gw, _ = gateway(answer(200, pi))
    res = await gw.cancel_payment(CancelPayment(provider_payment_id="pi_123"), idempotency_key="k")
    assert res.status is PaymentStatus.FAILED
    assert res.failure_code == "insufficient_funds"
