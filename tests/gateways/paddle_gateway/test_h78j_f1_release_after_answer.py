"""h78j F1: a Redis that hangs after Paddle answered a create turns the made payment into
Paddle's ``timeout`` and counts against the tenant's Paddle circuit.

The create's POST is answered (slow, as Paddle under load: within the call's timeout)
while Redis hangs; ``_while_held`` then *awaits* the release of the in-flight key,
bounded only by REDIS_WAIT_SECONDS (a quarter of the timeout), not by what is left of
the call's deadline. The deadline fires inside the release: the caller gets TIMEOUT
for a payment Paddle made, and the breaker a failure of Paddle's (review h78b's aim:
"a Redis that hangs is not taken for Paddle's timeout")."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aredis
from aiohttp import web

from paystream.gateways.base import REQUEST_SENT_SINCE, CreatePayment
from paystream.gateways.errors import GatewayError
from paystream.settings import load_settings
from paystream.tenancy.models import Tenant
from paystream.tenancy.policy import CallPolicy
from tests.fixtures.frozen_redis import own_redis
from tests.fixtures.paddle_fake import PaddleFake
from tests.gateways.paddle_gateway.wire import key, serve, usd, workers_gateway

CALL_TIMEOUT = 3.0
# Paddle answers the POST this long after it came: inside the call's timeout.
POST_SECONDS = 2.4
_redis_pid: list[int] = []


class _SlowPaddleRedisHangs(PaddleFake):
    """The fake; as a create's POST comes, the fleet's Redis freezes (SIGSTOP), and
    Paddle answers POST_SECONDS later."""

    async def create_transaction(self, request: web.Request) -> web.Response:
        os.kill(_redis_pid[0], signal.SIGSTOP)
        await asyncio.sleep(POST_SECONDS)
        return await super().create_transaction(request)


@pytest.fixture
async def slow_paddle() -> AsyncIterator[str]:
    runner, url = await serve(_SlowPaddleRedisHangs())
    yield url
    await runner.cleanup()


async def test_a_redis_hang_after_paddle_answered_is_not_paddles_timeout(
    slow_paddle: str, tmp_path: Path
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        paddle_api_base=slow_paddle,
        gateway_timeout_seconds=CALL_TIMEOUT,
        gateway_max_attempts=1,
    )
    policy = CallPolicy(settings)
    call = policy(Tenant(tenant_id=tenant, gateway="paddle"))
    with own_redis(tmp_path / "redis") as rd:
        assert rd.pid is not None
        _redis_pid[:] = [rd.pid]
        client = aredis.Redis.from_url(rd.url, socket_timeout=None)  # (as the worker's)
        # (built as the worker builds it: its wait a quarter of the call timeout)
        gw = workers_gateway(slow_paddle, tenant, client, settings)
        REQUEST_SENT_SINCE.set(time.time())
        req = CreatePayment(amount=usd(6100), provider_payment_method_id="checkout")
        k = key()
        outcome: object
        try:
            outcome = await call(lambda: gw.create_payment(req, idempotency_key=k))
        except GatewayError as exc:
            outcome = getattr(exc, "last", exc)
        finally:
            os.kill(rd.pid, signal.SIGCONT)
            await asyncio.sleep(0.2)
            await gw.aclose()
            await client.aclose()
    failures = policy.policy.breaker(tenant, "paddle").failures
    assert not isinstance(outcome, GatewayError), (
        f"Paddle made the payment and answered within {CALL_TIMEOUT}s, yet the call "
        f"ended {outcome!r}: the key's release, waiting on a hung Redis, ran past the "
        "call's deadline"
    )
    assert failures == 0, f"the tenant's Paddle circuit was charged {failures} failure(s)"
