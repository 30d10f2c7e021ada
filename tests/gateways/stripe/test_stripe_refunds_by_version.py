"""A charge's ``amount_refunded`` read by the API version Stripe answered in (review
finding): since 2025-03-31.basil it counts refunds only (the SDK's own version, sent
when a tenant pins none, is later), and taking the released rest of a partial capture
from it read a real refund of a partially captured payment as none."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.base import CapturePayment, RetrievePayment
from paystream.gateways.stripe.mapping import counts_refunds_only
from tests.gateways.stripe.test_stripe_transport import PI, gateway

# 20.00 authorised, 10.00 captured (the rest released), 6.00 refunded since.
_CHARGE = {"id": "ch_1", "object": "charge", "amount": 2000, "captured": True,
           "amount_captured": 1000, "refunded": False}  # fmt: skip


def _pi(amount_refunded: int) -> dict[str, Any]:
    charge = {**_CHARGE, "amount_refunded": amount_refunded}
    return {**PI, "amount": 2000, "amount_received": 1000, "latest_charge": charge}


@pytest.mark.parametrize("version", ["2025-03-31.basil", "2026-10-28.endive"])
async def test_refunds_of_a_partial_capture_count_since_basil(version: str) -> None:
    gw, _ = gateway(lambda _r: (200, _pi(600), {"Stripe-Version": version}))
    try:
        res = await gw.retrieve_payment(RetrievePayment(provider_payment_id="pi_123"),
                                        idempotency_key="k")  # fmt: skip
    finally:
        await gw.aclose()
    assert (res.amount_captured, res.amount_refunded) == (1000, 600)


async def test_before_basil_the_released_rest_is_no_refund() -> None:
    """The older rule: 10.00 released and 6.00 refunded report 16.00."""
    gw, _ = gateway(lambda _r: (200, _pi(1600), {"Stripe-Version": "2024-06-20"}))
    try:
        res = await gw.capture_payment(
            CapturePayment(provider_payment_id="pi_123", amount=1000), idempotency_key="k"
        )
    finally:
        await gw.aclose()
    assert (res.amount_captured, res.amount_refunded) == (1000, 600)


def test_an_answer_without_a_version_reads_as_the_older_rule() -> None:
    """localstripe sends no Stripe-Version and keeps the older rule; Stripe always
    sends one."""
    assert not counts_refunds_only(None)
    assert not counts_refunds_only("2025-03-30")
    assert counts_refunds_only("2025-03-31.basil")
