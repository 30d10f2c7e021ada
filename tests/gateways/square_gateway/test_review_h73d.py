"""Review h73d of the Square gateway: another location's payment, a keyless capture or cancel
redelivered, refunding the rest after a refusal, long evidence, a token pasted as a capability."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from paystream.errors import ConfigurationError
from paystream.gateways.base import (
    CancelPayment,
    CaptureMethod,
    CapturePayment,
    CreatePayment,
    CreateRefund,
    GatewayContext,
    PaymentStatus,
    RetrievePayment,
    SubmitDisputeEvidence,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.registry import GatewayDeps, build_gateway, validate_options
from paystream.gateways.square.gateway import SquareGateway
from paystream.money import Money
from paystream.settings import load_settings
from tests.fixtures.square_fake import FAKE_SQUARE_LOCATION, FAKE_SQUARE_TOKEN


def key() -> str:
    return f"idem-{uuid.uuid4().hex}"


def usd(amount: int) -> Money:
    return Money(amount=amount, currency="USD")


def _gateway(url: str, location: str = FAKE_SQUARE_LOCATION) -> SquareGateway:
    ctx = GatewayContext(
        tenant_id=f"t-{location}",
        provider="square",
        credentials={"access_token": SecretStr(FAKE_SQUARE_TOKEN)},
        options={"location_id": location},
    )
    gw = build_gateway(ctx, GatewayDeps(settings=load_settings(square_api_base=url)))
    assert isinstance(gw, SquareGateway)
    return gw


class Wire(httpx.AsyncBaseTransport):
    """The real wire to the fake, with two test hooks: ``lose`` (a path fragment) makes
    Square run the request and the answer be lost (a read timeout); ``answer`` (path
    fragment -> (status, body)) makes Square answer once without running the request."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lose: str | None = None
        self.answer: dict[str, tuple[int, dict[str, object]]] = {}
        self.sent: list[tuple[str, dict[str, object]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}") if request.method == "POST" else {}
        self.sent.append((request.url.path, body))
        for fragment, (status, payload) in list(self.answer.items()):
            if fragment in request.url.path:
                del self.answer[fragment]
                return httpx.Response(status, json=payload, request=request)
        response = await self.inner.handle_async_request(request)
        if self.lose and self.lose in request.url.path:
            self.lose = None
            await response.aread()
            await response.aclose()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def wired(square_url: str) -> AsyncIterator[tuple[SquareGateway, Wire]]:
    from square import AsyncSquare

    wire = Wire()
    http = httpx.AsyncClient(transport=wire, timeout=10, follow_redirects=False)
    client = AsyncSquare(token=FAKE_SQUARE_TOKEN, base_url=square_url, httpx_client=http)
    gw = SquareGateway(client, location_id=FAKE_SQUARE_LOCATION, http_client=http)
    yield gw, wire
    await gw.aclose()


async def _paid(gw: SquareGateway, amount: int, *, manual: bool = False) -> str:
    res = await gw.create_payment(
        CreatePayment(
            amount=usd(amount),
            provider_payment_method_id="cnon:card-nonce-ok",
            capture_method=CaptureMethod.MANUAL if manual else CaptureMethod.AUTOMATIC,
        ),
        idempotency_key=key(),
    )
    return res.provider_payment_id


# ---- F1: a tenant acts on another location's payments ---------------------------------


async def test_f1_another_locations_payment_is_not_found_and_not_refunded(
    square_url: str,
) -> None:
    """Two tenants on one Square seller (one per location, the same token): tenant B
    must not read, refund, capture or cancel tenant A's payments."""
    shop_a = _gateway(square_url)
    shop_b = _gateway(square_url, location="LOTHERSHOP01")
    try:
        pid = await _paid(shop_a, 900)
        auth = await _paid(shop_a, 500, manual=True)
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
    auth = await _paid(gw, 3000, manual=True)
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
    pid = await _paid(gw, 1000)
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
    pid = await _paid(gw, 2000)
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
