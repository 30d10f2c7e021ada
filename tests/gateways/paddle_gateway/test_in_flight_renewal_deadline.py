"""A create's in-flight key renewed before its POST after a long lookup: Redis's wait
is capped by what is left of the call's deadline (review h78 F1, Paddle in-flight keys).

The lookup (Paddle's GET /transactions, slow under load) ends a little before the call's
deadline, and Redis hangs from then (SIGSTOP): a renewal waited for the whole Redis wait
(a quarter of the timeout) ran past the deadline, and the call ended in Paddle's
``timeout``, a failure on the tenant's Paddle circuit, for what was Redis's hang. Capped,
it is refused ``provider_unavailable`` (Redis's, ``local_dependency``) within the
deadline, never sent."""

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
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle.references import request_tag
from paystream.settings import load_settings
from paystream.tenancy.models import Tenant
from paystream.tenancy.policy import CallPolicy
from tests.fixtures.frozen_redis import own_redis
from tests.fixtures.paddle_fake import PaddleFake
from tests.gateways.paddle_gateway.wire import effects, key, serve, usd, workers_gateway

CALL_TIMEOUT = 3.0
# The lookup's answer comes this long after it was asked: the Redis wait (0.75 s, a
# quarter of the timeout) after it would end past the deadline.
LOOKUP_SECONDS = 2.6
_redis_pid: list[int] = []


class _SlowLookupRedisHangs(PaddleFake):
    """The fake; as a create's lookup comes, the fleet's Redis freezes (SIGSTOP), and
    Paddle answers it LOOKUP_SECONDS later."""

    async def list_transactions(self, request: web.Request) -> web.Response:
        os.kill(_redis_pid[0], signal.SIGSTOP)
        await asyncio.sleep(LOOKUP_SECONDS)
        return await super().list_transactions(request)


@pytest.fixture
async def slow_lookup() -> AsyncIterator[str]:
    runner, url = await serve(_SlowLookupRedisHangs())
    yield url
    await runner.cleanup()


async def test_a_renewal_after_a_long_lookup_ends_within_the_calls_deadline(
    slow_lookup: str, tmp_path: Path
) -> None:
    url = slow_lookup
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        paddle_api_base=url, gateway_timeout_seconds=CALL_TIMEOUT, gateway_max_attempts=1
    )
    policy = CallPolicy(settings)
    call = policy(Tenant(tenant_id=tenant, gateway="paddle"))
    with own_redis(tmp_path / "redis") as rd:
        assert rd.pid is not None
        _redis_pid[:] = [rd.pid]
        client = aredis.Redis.from_url(rd.url, socket_timeout=None)  # (as the worker's)
        gw = workers_gateway(url, tenant, client, settings)
        REQUEST_SENT_SINCE.set(time.time())
        req = CreatePayment(amount=usd(6200), provider_payment_method_id="checkout")
        k = key()
        outcome: object
        started = time.monotonic()
        try:
            outcome = await call(lambda: gw.create_payment(req, idempotency_key=k))
        except GatewayError as exc:
            outcome = getattr(exc, "last", exc)
        took = time.monotonic() - started
        try:
            os.kill(rd.pid, signal.SIGCONT)
            await asyncio.sleep(0.2)
            ledger = await effects(url)
        finally:
            await gw.aclose()
            await client.aclose()
    failures = policy.policy.breaker(tenant, "paddle").failures
    assert isinstance(outcome, GatewayError), outcome
    assert outcome.code is ErrorCode.PROVIDER_UNAVAILABLE, (
        f"the call ended {outcome!r} after {took:.2f}s: the renewal's wait on a hung "
        f"Redis ran past the call's {CALL_TIMEOUT}s deadline"
    )
    assert outcome.local_dependency and not outcome.reached_provider, outcome
    assert took < CALL_TIMEOUT, took
    assert failures == 0, f"the tenant's Paddle circuit was charged {failures} failure(s)"
    made = [
        e
        for e in ledger
        if e["kind"] == "transaction"
        and (e.get("custom_data") or {}).get("paystream_request") == request_tag(k)
    ]
    assert made == []  # (never sent unguarded)
