"""What the Paddle gateway cannot tell while its in-flight store says so, or is down
(review h77g F3, F5): asked whether a request was made (``knows_request``, for a
suspended tenant's command a crash lost) while a try of it may still be made, it cannot
tell now rather than "not made" (the command would be refused for good while Paddle
makes it); and Redis down refuses creates without a verdict on the tenant's Paddle
circuit (its reads and cancels need no Redis)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aredis
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from paystream.devstack._process import free_port
from paystream.gateways.base import (
    REQUEST_SENT_SINCE,
    CreatePayment,
    CreateRefund,
    RetrievePayment,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle.in_flight import in_flight_key
from paystream.gateways.paddle.references import request_tag
from paystream.gateways.retry import CircuitState
from paystream.settings import load_settings
from paystream.tenancy.models import Tenant
from paystream.tenancy.policy import CallPolicy
from tests.fixtures.paddle_fake import PaddleFake
from tests.gateways.paddle_gateway.wire import gateway, key, losing, serve, usd


class _SlowPaddle(PaddleFake):
    """Paddle takes 1.5 s to make a transaction (the POST's key held meanwhile)."""

    async def create_transaction(self, request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)
        return await super().create_transaction(request)


def _redis_down() -> aredis.Redis:
    return aredis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))


async def test_knows_request_cannot_tell_while_a_try_of_it_is_in_flight(
    redis_client: aredis.Redis,
) -> None:
    """Another worker's POST under way (or this one's before it was killed): "not made"
    would refuse the command for good, and Paddle makes it. The key is read, not taken."""
    runner, url = await serve(_SlowPaddle())
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    old, new = gateway(url, tenant_id=tenant), gateway(url, tenant_id=tenant)
    for gw in (old, new):
        gw._client._sdk.timeout = 2.0
    req = CreatePayment(amount=usd(4900), provider_payment_method_id="checkout")
    k = key()
    name = in_flight_key(tenant, request_tag(k))
    REQUEST_SENT_SINCE.set(time.time())
    try:
        first = asyncio.ensure_future(old.create_payment(req, idempotency_key=k))
        await asyncio.sleep(0.3)  # (the old worker's POST under way)
        holder = await redis_client.get(name)
        with pytest.raises(GatewayError) as during:
            await new.knows_request("create_payment", req, idempotency_key=k)
        still = await redis_client.get(name)
        await first
        after = await new.knows_request("create_payment", req, idempotency_key=k)
    finally:
        await old.aclose()
        await new.aclose()
        await runner.cleanup()
    assert during.value.code is ErrorCode.IDEMPOTENCY_ERROR and during.value.retryable
    assert not during.value.reached_provider and during.value.retry_after
    assert holder is not None and still == holder  # (read only: the try's own key)
    assert after is True


async def test_knows_request_cannot_tell_a_refund_in_flight(
    paddle_url: str, redis_client: aredis.Redis
) -> None:
    """A refund's try holds its key as a payment's does; asked nothing of Paddle."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    gw = gateway(paddle_url, tenant_id=tenant)
    client = losing(gw, "GET", "adjustments", lose=0)  # (records what is sent)
    k = key()
    name = in_flight_key(tenant, request_tag(k))
    await redis_client.set(name, "another-workers-token", px=60_000)
    req = CreateRefund(provider_payment_id="txn_01none", amount=100)
    try:
        with pytest.raises(GatewayError) as held:
            await gw.knows_request("create_refund", req, idempotency_key=k)
    finally:
        await redis_client.delete(name)
        await gw.aclose()
    assert held.value.code is ErrorCode.IDEMPOTENCY_ERROR and held.value.retryable
    assert client.sent == []


async def test_knows_request_cannot_tell_without_redis(paddle_url: str) -> None:
    """Redis down: whether a try is in flight cannot be read, so neither can "not made"
    be said (provider_unavailable: the pipeline parks the command, asks again later)."""
    down = _redis_down()
    gw = gateway(paddle_url, redis=down)
    client = losing(gw, "GET", "transactions", lose=0)
    req = CreatePayment(amount=usd(5100), provider_payment_method_id="checkout")
    REQUEST_SENT_SINCE.set(time.time())
    try:
        with pytest.raises(GatewayError) as unknown:
            await gw.knows_request("create_payment", req, idempotency_key=key())
    finally:
        await gw.aclose()
        await down.aclose()
    assert unknown.value.code is ErrorCode.PROVIDER_UNAVAILABLE and unknown.value.retryable
    assert client.sent == []


async def test_redis_down_is_no_verdict_on_the_tenants_paddle_circuit(paddle_url: str) -> None:
    """Creates refused for Redis down (retryable, parked) leave the tenant's Paddle
    circuit closed: its reads (and cancels) go on, and Paddle is not blamed."""
    down = _redis_down()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    gw, healthy = gateway(paddle_url, redis=down, tenant_id=tenant), gateway(paddle_url)
    settings = load_settings(
        paddle_api_base=paddle_url, gateway_max_attempts=1, breaker_failure_threshold=2
    )
    policy = CallPolicy(settings)
    call = policy(Tenant(tenant_id=tenant, gateway="paddle"))
    REQUEST_SENT_SINCE.set(time.time())
    try:
        made = await healthy.create_payment(
            CreatePayment(amount=usd(5000), provider_payment_method_id="checkout"),
            idempotency_key=key(),
        )
        for _ in range(3):
            with pytest.raises(GatewayError) as refused:
                await call(
                    lambda: gw.create_payment(
                        CreatePayment(amount=usd(5000), provider_payment_method_id="checkout"),
                        idempotency_key=key(),
                    )
                )
            assert refused.value.code is ErrorCode.PROVIDER_UNAVAILABLE
        state = policy.policy.breaker(tenant, "paddle").state
        pid = made.provider_payment_id
        read = await call(
            lambda: gw.retrieve_payment(
                RetrievePayment(provider_payment_id=pid), idempotency_key=key()
            )
        )
    finally:
        await gw.aclose()
        await healthy.aclose()
        await down.aclose()
    assert state is CircuitState.CLOSED, (
        f"the tenant's Paddle circuit is {state.value} after Redis refused its creates"
    )
    assert read.provider_payment_id == pid  # (a read, no Redis needed: not parked)
