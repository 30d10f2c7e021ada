"""Review h73d of the Square gateway: another location's payment, a keyless capture or cancel
redelivered, refunding the rest after a refusal, long evidence, a token pasted as a capability."""

from __future__ import annotations

import httpx
import pytest

from paystream.errors import ConfigurationError
from paystream.gateways.base import (
    CancelPayment,
    CapturePayment,
    CreateRefund,
    PaymentStatus,
    RetrievePayment,
    SubmitDisputeEvidence,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.registry import validate_options
from paystream.gateways.square.gateway import SquareGateway
from tests.gateways.square_gateway.wire import Wire, gateway_at, key, paid, usd, wired

__all__ = ["wired"]


# ---- F1: a tenant acts on another location's payments ---------------------------------


async def test_f1_another_locations_payment_is_not_found_and_not_refunded(
    square_url: str,
) -> None:
    """Two tenants on one Square seller (one per location, the same token): tenant B
    must not read, refund, capture or cancel tenant A's payments."""
    shop_a = gateway_at(square_url)
    shop_b = gateway_at(square_url, location="LOTHERSHOP01")
    try:
        pid = await paid(shop_a, 900)
        auth = await paid(shop_a, 500, manual=True)
        failures = []
        for call in (
            shop_b.retrieve_payment(
                RetrievePayment(provider_payment_id=pid), idempotency_key=key()
            ),
            shop_b.create_refund(
                CreateRefund(provider_payment_id=pid, amount=100), idempotency_key=key()
            ),
            shop_b.create_refund(CreateRefund(provider_payment_id=pid), idempotency_key=key()),
            shop_b.capture_payment(CapturePayment(provider_payment_id=auth), idempotency_key=key()),
            shop_b.cancel_payment(CancelPayment(provider_payment_id=auth), idempotency_key=key()),
        ):
            try:
                got = await call
                failures.append(f"answered {type(got).__name__}")
            except GatewayError as exc:
                if exc.code is not ErrorCode.NOT_FOUND:
                    failures.append(exc.code.value)
        now = await shop_a.retrieve_payment(
            RetrievePayment(provider_payment_id=pid), idempotency_key=key()
        )
        held = await shop_a.retrieve_payment(
            RetrievePayment(provider_payment_id=auth), idempotency_key=key()
        )
    finally:
        await shop_a.aclose()
        await shop_b.aclose()
    assert failures == [], failures
    assert now.amount_refunded == 0
    assert held.status is PaymentStatus.AUTHORIZED


# ---- F2: capture / cancel / evidence redelivered after a lost answer --------------------


@pytest.mark.parametrize(
    ("fragment", "operation", "expected"),
    [
        ("/complete", "capture", PaymentStatus.SUCCEEDED),
        ("/cancel", "cancel", PaymentStatus.CANCELED),
    ],
)
async def test_f2_capture_or_cancel_redelivered_after_a_lost_answer_reports_what_happened(
    wired: tuple[SquareGateway, Wire],
    fragment: str,
    operation: str,
    expected: PaymentStatus,
) -> None:
    gw, wire = wired
    auth = await paid(gw, 3000, manual=True)
    k = key()

    async def once() -> object:
        if operation == "capture":
            return await gw.capture_payment(
                CapturePayment(provider_payment_id=auth), idempotency_key=k
            )
        return await gw.cancel_payment(CancelPayment(provider_payment_id=auth), idempotency_key=k)

    wire.lose = fragment
    with pytest.raises(GatewayError) as first:
        await once()
    assert first.value.retryable  # the pipeline sends it again, same key
    again = await once()  # today: GatewayError invalid_state (payment recorded authorized)
    assert again.status is expected  # type: ignore[attr-defined]


# ---- F3: "refund the rest" refunds another refund's amount -----------------------------


async def test_f3_refund_the_rest_never_refunds_an_amount_nobody_asked_for(
    wired: tuple[SquareGateway, Wire],
) -> None:
    """Square refuses the first attempt without running it (REFUND_ALREADY_PENDING: another
    refund is pending); the fallback then sends the key with the OTHER refund's amount,
    which Square runs as a new refund (its key never had a successful request)."""
    gw, wire = wired
    pid = await paid(gw, 1000)
    await gw.create_refund(CreateRefund(provider_payment_id=pid, amount=300), idempotency_key=key())
    wire.answer["/v2/refunds"] = (
        400,
        {
            "errors": [
                {
                    "category": "INVALID_REQUEST_ERROR",
                    "code": "REFUND_ALREADY_PENDING",
                    "detail": "The payment already has a pending refund.",
                }
            ]
        },
    )
    try:
        made = await gw.create_refund(CreateRefund(provider_payment_id=pid), idempotency_key=key())
    except GatewayError:
        made = None  # refused: fine, nothing moved
    now = await gw.retrieve_payment(RetrievePayment(provider_payment_id=pid), idempotency_key=key())
    if made is not None:
        assert made.amount == usd(700)  # "the rest", never the other refund's 300
    assert now.amount_refunded in (300, 1000), now.amount_refunded


# ---- F4: dispute evidence silently cut to 500 characters --------------------------------


async def test_f4_long_dispute_evidence_is_not_silently_cut(
    wired: tuple[SquareGateway, Wire], square_url: str
) -> None:
    gw, wire = wired
    pid = await paid(gw, 2000)
    async with httpx.AsyncClient() as http:
        opened = await http.post(f"{square_url}/_fake/disputes", json={"payment_id": pid})
    did = opened.json()["dispute"]["id"]
    text = "Delivered 2024-03-01, signed by the cardholder. " + "x" * 1200 + " END-OF-EVIDENCE"
    try:
        await gw.submit_dispute_evidence(
            SubmitDisputeEvidence(
                provider_dispute_id=did, evidence={"shipping_documentation": text}
            ),
            idempotency_key=key(),
        )
    except GatewayError as exc:  # refused before anything was sent: acceptable
        assert exc.code is ErrorCode.INVALID_REQUEST
        assert not any("submit-evidence" in path for path, _ in wire.sent)
        return
    sent = "".join(
        str(body.get("evidence_text", "")) for path, body in wire.sent if "evidence-text" in path
    )
    assert "END-OF-EVIDENCE" in sent, f"submitted {len(sent)} of {len(text)} characters"


# ---- F5: a pasted access token repeated by the capabilities option's error ---------------


def test_f5_a_token_pasted_as_a_capability_is_not_repeated() -> None:
    pasted = "EAAAl0ngPastedSquareAccessToken0123456789"
    for options in (
        {"location_id": "L1A2B3C4D5E6F", "capabilities": [pasted]},
        {"location_id": "L1A2B3C4D5E6F", "capabilities": ["payments", pasted]},
    ):
        with pytest.raises(ConfigurationError) as info:
            validate_options("square", options)
        assert pasted not in str(info.value)
