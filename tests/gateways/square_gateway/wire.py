"""A Square gateway over the real wire to the tests' FAKE Square (tests/fixtures/
square_fake.py), for the review tests of the Square gateway: a tenant's gateway at a
location, a wire that can lose an answer or answer in Square's place, a payment made."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from paystream.gateways.base import CaptureMethod, CreatePayment, GatewayContext
from paystream.gateways.registry import GatewayDeps, build_gateway
from paystream.gateways.square.gateway import SquareGateway
from paystream.money import Money
from paystream.settings import load_settings
from tests.fixtures.square_fake import FAKE_SQUARE_LOCATION, FAKE_SQUARE_TOKEN

__all__ = ["Wire", "gateway_at", "key", "paid", "usd", "wired"]


def key() -> str:
    return f"idem-{uuid.uuid4().hex}"


def usd(amount: int) -> Money:
    return Money(amount=amount, currency="USD")


def gateway_at(url: str, location: str = FAKE_SQUARE_LOCATION) -> SquareGateway:
    """The gateway of a tenant taking the fake's main seller's payments at ``location``."""
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
    """The real wire to the fake, with two test hooks: ``lose`` (a path fragment, or
    "METHOD /path" for one method's) makes Square run the request and the answer be
    lost (a read timeout); ``answer`` (path fragment -> (status, body)) makes Square
    answer once without running the request."""

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
        if self.lose and self.lose in f"{request.method} {request.url.path}":
            self.lose = None
            await response.aread()
            await response.aclose()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def wired(square_url: str) -> AsyncIterator[tuple[SquareGateway, Wire]]:
    """A gateway at the fake's main location whose calls go over a ``Wire``."""
    from square import AsyncSquare

    wire = Wire()
    http = httpx.AsyncClient(transport=wire, timeout=10, follow_redirects=False)
    client = AsyncSquare(token=FAKE_SQUARE_TOKEN, base_url=square_url, httpx_client=http)
    gw = SquareGateway(client, location_id=FAKE_SQUARE_LOCATION, http_client=http)
    yield gw, wire
    await gw.aclose()


async def paid(gw: SquareGateway, amount: int = 2000, *, manual: bool = False) -> str:
    """A payment of ``amount`` made through ``gw`` (authorised only with ``manual``)."""
    res = await gw.create_payment(
        CreatePayment(
            amount=usd(amount),
            provider_payment_method_id="cnon:card-nonce-ok",
            capture_method=CaptureMethod.MANUAL if manual else CaptureMethod.AUTOMATIC,
        ),
        idempotency_key=key(),
    )
    return res.provider_payment_id
