"""Guards for the in-flight key's token rules and the lookup join (review h77g): only
the holder's token renews, releases or expires the key; a try whose key another took
during its lookup sends no POST; a lookup whose key lapsed is not joined."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import redis.asyncio as aredis
from aiohttp import web

from paystream.devstack._process import free_port
from paystream.gateways.base import REQUEST_SENT_SINCE, CreatePayment
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle.in_flight import InFlight, in_flight_key
from paystream.gateways.paddle.references import request_tag
from tests.fixtures.paddle_fake import PaddleFake
from tests.gateways.paddle_gateway.wire import effects, gateway, key, losing, usd


async def test_only_the_holders_token_renews_releases_or_expires_the_key(
    redis_client: aredis.Redis,
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    held = InFlight(redis_client, tenant)
    name = in_flight_key(tenant, "tag")
    assert await held.take("tag", "mine", 30.0) is True
    with pytest.raises(GatewayError) as refused:
        await held.renew("tag", "theirs", 60.0)
    assert refused.value.code is ErrorCode.IDEMPOTENCY_ERROR
    await held.release("tag", "theirs")
    held.expire_soon("tag", "theirs", 0.001)
    await asyncio.sleep(0.05)
    try:
        assert await redis_client.get(name) == b"mine"
        assert 0 < await redis_client.pttl(name) <= 30_000
    finally:
        await redis_client.delete(name)


class _SlowLookup(PaddleFake):
    """Transaction lists answered after ``delay``, running ``during`` (a test's hook: what
    another worker does meanwhile) before they read."""

    delay: ClassVar[float] = 0.5
    during: ClassVar[Callable[[], Any] | None] = None

    async def list_transactions(self, request: web.Request) -> web.Response:
        hook, type(self).during = type(self).during, None
        if hook is not None:
            await hook()
        await asyncio.sleep(self.delay)
        return await super().list_transactions(request)


async def _serve() -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(_SlowLookup().app(), handler_cancellation=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def test_a_try_whose_key_was_taken_during_its_lookup_sends_no_post(
    redis_client: aredis.Redis,
) -> None:
    """Its key expired during a long lookup and another worker took it: no POST (M3, M8)."""
    runner, url = await _serve()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    gw = gateway(url, tenant_id=tenant)
    client = losing(gw, "POST", "transactions", lose=0)
    k = key()
    name = in_flight_key(tenant, request_tag(k))

    async def taken_by_another() -> None:
        await redis_client.set(name, "another-worker", px=5000)

    _SlowLookup.during = taken_by_another
    REQUEST_SENT_SINCE.set(time.time())
    try:
        with pytest.raises(GatewayError) as refused:
            await gw.create_payment(
                CreatePayment(amount=usd(5100), provider_payment_method_id="checkout"),
                idempotency_key=k,
            )
    finally:
        await redis_client.delete(name)
        await gw.aclose()
        await runner.cleanup()
    assert refused.value.code is ErrorCode.IDEMPOTENCY_ERROR
    assert ("POST", "transactions") not in client.sent


async def test_a_lookup_whose_key_lapsed_is_not_joined(redis_client: aredis.Redis) -> None:
    """A try cut short in its lookup; its key lapses and another worker makes the
    payment meanwhile; the retry must look afresh, not use the lapsed lookup (M5)."""
    runner, url = await _serve()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    gw, other = gateway(url, tenant_id=tenant), gateway(url, tenant_id=tenant)
    req = CreatePayment(amount=usd(5200), provider_payment_method_id="checkout")
    k = key()
    name = in_flight_key(tenant, request_tag(k))
    REQUEST_SENT_SINCE.set(time.time())
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await gw.create_payment(req, idempotency_key=k)  # (its lookup goes on)
        await redis_client.delete(name)  # (its key lapsed)
        made = await other.create_payment(req, idempotency_key=k)
        again = await gw.create_payment(req, idempotency_key=k)
        ours = [
            e["id"]
            for e in await effects(url)
            if e["kind"] == "transaction"
            and (e.get("custom_data") or {}).get("paystream_request") == request_tag(k)
        ]
    finally:
        await redis_client.delete(name)
        await gw.aclose()
        await other.aclose()
        await runner.cleanup()
    assert again.provider_payment_id == made.provider_payment_id
    assert len(ours) == 1, f"two transactions: {ours}"
