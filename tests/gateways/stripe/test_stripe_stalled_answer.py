"""An answer that stalls mid-body past the call's timeout is a retryable GatewayError at
the gateway's boundary, not a raw TimeoutError (review finding: the SDK reads the body
outside its own error handling)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from pydantic import SecretStr

from paystream.gateways.base import CreatePayment, GatewayContext
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.stripe import StripeGateway
from paystream.money import Money
from paystream.settings import load_settings


async def test_a_stalled_body_is_a_retryable_gateway_error() -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b'{"id": "pi_1", ')
        await asyncio.sleep(2)
        return resp

    app = web.Application()
    app.router.add_post("/v1/payment_intents", stall)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    settings = load_settings(stripe_api_base=f"http://127.0.0.1:{port}", gateway_timeout_seconds=1)
    ctx = GatewayContext(tenant_id="t1", provider="stripe",
                         credentials={"api_key": SecretStr("sk_test_x")}, options={})  # fmt: skip
    gw = StripeGateway.from_context(ctx, GatewayDeps(settings=settings, redis=None))
    try:
        req = CreatePayment(
            amount=Money(amount=1000, currency="USD"), provider_payment_method_id="pm_x"
        )
        with pytest.raises(GatewayError) as info:
            await gw.create_payment(req, idempotency_key="k")
        assert info.value.code is ErrorCode.TIMEOUT and info.value.retryable
    finally:
        await gw.aclose()
        await runner.cleanup()
