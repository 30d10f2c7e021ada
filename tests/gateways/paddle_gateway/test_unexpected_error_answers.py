"""The SDK builds its ApiError inside its own ``except`` block, and that code raises on
error answers it does not expect (review h75r1 F5): an ``error`` object without
``documentation_url`` (KeyError), an ``error`` that is a string (AttributeError), a
``Retry-After`` that is not an integer, e.g. an HTTP date or "1.5" (ValueError). These
escaped PaddleClient._send as bugs (dead_letter_bug: an internal_error park for a
person); they are answers without Paddle's shape, retried."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from paystream.devstack._process import free_port
from paystream.gateways.base import RetrieveCustomer
from paystream.gateways.errors import GatewayError
from tests.gateways.paddle_gateway.wire import gateway, key

ANSWERS = {
    # A proxy's or CDN's 429, its Retry-After an HTTP date (RFC 9110 allows it).
    "/customers/ctm_date": (
        429,
        {"error": {"type": "api_error", "code": "too_many_requests", "detail": "slow down",
                   "documentation_url": "https://developer.paddle.com/errors"}},
        {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
    ),
    # An error object without documentation_url (a gateway in front, an older shape).
    "/customers/ctm_nodoc": (
        503, {"error": {"type": "api_error", "code": "service_unavailable", "detail": "x"}}, {}
    ),
    # A load balancer's JSON error.
    "/customers/ctm_text": (502, {"error": "Bad Gateway"}, {}),
}  # fmt: skip


@pytest.fixture
async def odd_server() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.Response:
        status, body, headers = ANSWERS[request.path]
        return web.json_response(body, status=status, headers=headers)

    app = web.Application()
    app.router.add_get("/customers/{id}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("customer", ["ctm_date", "ctm_nodoc", "ctm_text"])
async def test_an_unexpected_error_answer_is_a_retryable_gateway_error(
    odd_server: str, customer: str
) -> None:
    gw = gateway(odd_server)
    try:
        with pytest.raises(GatewayError) as raised:
            await gw.retrieve_customer(
                RetrieveCustomer(provider_customer_id=customer), idempotency_key=key()
            )
        assert raised.value.retryable
    finally:
        await gw.aclose()
