"""Review h73i: what the Square gateway writes into reference_id and a refund's reason
for a tenant WITHOUT webhooks (the handler adds no reference: the metadata is the
producer's own, passed through as sent)."""

from __future__ import annotations

import uuid

import pytest

from paystream.gateways.base import CreatePayment, CreateRefund
from paystream.money import Money
from tests.gateways.square_gateway.test_square_webhooks import _square_gateway

pytestmark = pytest.mark.asyncio


def _payment(metadata: dict[str, str]) -> CreatePayment:
    return CreatePayment(
        amount=Money(amount=500, currency="USD"),
        provider_payment_method_id="cnon:card-nonce-ok",
        metadata=metadata,
    )


async def test_a_producers_own_payment_key_is_not_sent_as_reference_id(square_url: str) -> None:
    """A producer's metadata naming another tenant (or copied from Stripe objects): the
    Square payment carried that tenant's tag as paystream's reference."""
    gw = _square_gateway(square_url, webhooks=False)
    try:
        paid = await gw.create_payment(
            _payment({"paystream_payment": "globex:pay_9"}), idempotency_key=uuid.uuid4().hex
        )
        at_square = await gw.read_payment(paid.provider_payment_id)
        assert "reference_id" not in at_square, at_square.get("reference_id")
    finally:
        await gw.aclose()


async def test_a_producers_own_refund_key_does_not_make_the_refund_fail(square_url: str) -> None:
    """Metadata values go to 500 characters: one under paystream_refund became the refund's
    reason at Square (the real reason cut off), and without a reason it made the reason
    longer than Square's 192: the refund was refused (it went through before)."""
    gw = _square_gateway(square_url, webhooks=False)
    try:
        paid = await gw.create_payment(_payment({}), idempotency_key=uuid.uuid4().hex)
        refund = CreateRefund(
            provider_payment_id=paid.provider_payment_id,
            amount=100,
            reason="requested_by_customer",
            metadata={"paystream_refund": "acme:" + "r" * 300},
        )
        done = await gw.create_refund(refund, idempotency_key=uuid.uuid4().hex)
        got = await gw._sq.refunds.get(done.provider_refund_id)
        assert got.refund.reason == "requested_by_customer"
        reasonless = refund.model_copy(update={"reason": None})
        await gw.create_refund(reasonless, idempotency_key=uuid.uuid4().hex)  # (not refused)
    finally:
        await gw.aclose()
