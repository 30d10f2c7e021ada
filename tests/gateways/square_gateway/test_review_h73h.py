"""Review h73h (the crash test over Square, tests/e2e/test_square_crash.py): a keyless
CompletePayment sent again after its payment was refunded."""

from __future__ import annotations

import pytest

from paystream.gateways.base import CapturePayment, CreateRefund, PaymentStatus
from paystream.gateways.errors import GatewayError
from paystream.gateways.square.gateway import SquareGateway
from tests.gateways.square_gateway.wire import Wire, key, paid, wired

__all__ = ["wired"]


async def test_a_capture_sent_again_after_a_refund_answers_what_complete_payment_answered(
    wired: tuple[SquareGateway, Wire],
) -> None:
    """A worker completes a payment and refunds it (two commands), then dies before either
    outcome is committed: both are re-run. The capture, keyless, reads the payment back;
    answering the refund made since as part of the capture (amount_refunded 400), the
    pipeline counts it on the payment, and the refund, re-run under its key (Square
    replays it), counts it again: 800 refunded in paystream's table, 400 at Square (and
    a refund of the rest re-run is refused "nothing left", though Square refunded it)."""
    gw, _ = wired
    pid = await paid(gw, 1000, manual=True)
    capture = CapturePayment(provider_payment_id=pid)
    capture_key = key()
    first = await gw.capture_payment(capture, idempotency_key=capture_key)
    assert (first.status, first.amount_captured, first.amount_refunded) == (
        PaymentStatus.SUCCEEDED,
        1000,
        0,
    )
    await gw.create_refund(CreateRefund(provider_payment_id=pid, amount=400), idempotency_key=key())
    # The capture re-run (its outcome lost with the worker): the same answer as the first.
    again = await gw.capture_payment(capture, idempotency_key=capture_key)
    assert again == first  # today: amount_refunded 400


async def test_a_capture_lost_then_sent_again_after_a_refund_of_the_rest(
    wired: tuple[SquareGateway, Wire],
) -> None:
    gw, wire = wired
    pid = await paid(gw, 1000, manual=True)
    capture = CapturePayment(provider_payment_id=pid)
    capture_key = key()
    wire.lose = "/complete"
    with pytest.raises(GatewayError):
        await gw.capture_payment(capture, idempotency_key=capture_key)
    await gw.create_refund(CreateRefund(provider_payment_id=pid), idempotency_key=key())
    again = await gw.capture_payment(capture, idempotency_key=capture_key)
    assert (again.status, again.amount_captured, again.amount_refunded) == (
        PaymentStatus.SUCCEEDED,
        1000,
        0,
    )
