"""The earlier-try lookup reads every API transaction the seller made since the
request's first let-through, 30 a page, and ran inside the one per-call deadline
(PAYSTREAM_GATEWAY_TIMEOUT_SECONDS, which also covers the POST): a re-driven create of a
busy seller timed out on every try, each re-reading from the first page (4 tries: 4x
the GETs, against Paddle's 240 requests a minute per IP), and never completed (review
h75r1 F4). A lookup cut short by the deadline now goes on, and the retry uses it.

Scaled down: 300 API transactions (10 pages) since a command parked an hour ago, each
page 120 ms, the deadline 1 s (as 10 pages of 1.2 s against the default 10 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from paystream.devstack._process import free_port
from paystream.gateways.base import REQUEST_SENT_SINCE, CreatePayment
from paystream.gateways.errors import GatewayError
from paystream.settings import load_settings
from paystream.tenancy.models import Tenant
from paystream.tenancy.policy import CallPolicy
from tests.fixtures.paddle_fake import FAKE_PADDLE_API_KEY, PaddleFake
from tests.gateways.paddle_gateway.wire import gateway, key, usd

PAGE_SECONDS = 0.12


class _Listing(PaddleFake):
    gets = 0

    async def list_transactions(self, request: web.Request) -> web.Response:
        type(self).gets += 1
        await asyncio.sleep(PAGE_SECONDS)
        return await super().list_transactions(request)


@pytest.fixture
async def busy_seller() -> AsyncIterator[str]:
    runner = web.AppRunner(_Listing().app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    body = {
        "items": [
            {
                "quantity": 1,
                "price": {
                    "description": "other checkout",
                    "unit_price": {"amount": "500", "currency_code": "USD"},
                    "product": {"name": "x", "tax_category": "standard"},
                },
            }
        ],
        "currency_code": "USD",
        "collection_mode": "automatic",
    }
    auth = {"Authorization": f"Bearer {FAKE_PADDLE_API_KEY}"}
    async with aiohttp.ClientSession(headers=auth) as s:
        for _ in range(300):  # (the seller's other API checkouts since)
            async with s.post(f"{url}/transactions", json=body) as r:
                assert r.status == 201
    yield url
    await runner.cleanup()


async def test_a_redriven_create_of_a_busy_seller_completes(busy_seller: str) -> None:
    settings = load_settings(
        paddle_api_base=busy_seller, gateway_timeout_seconds=1.0, gateway_max_attempts=4
    )
    gw = gateway(busy_seller)
    call = CallPolicy(settings)(Tenant(tenant_id="t-busy", gateway="paddle"))
    REQUEST_SENT_SINCE.set(time.time() - 3600)  # (parked an hour ago, re-driven now)
    _Listing.gets = 0
    failed: GatewayError | None = None
    req = CreatePayment(amount=usd(900), provider_payment_method_id="checkout")
    k = key()  # (one command: each try under its key)
    try:
        await call(lambda: gw.create_payment(req, idempotency_key=k))
    except GatewayError as exc:
        failed = exc
    await gw.aclose()
    assert failed is None, (
        f"{failed.code.value if failed else ''} after {_Listing.gets} list pages for one "
        "command (10 pages would do; the docs promise 50)"
    )
    assert _Listing.gets <= 11, f"{_Listing.gets} list pages read for 10 (read again?)"
