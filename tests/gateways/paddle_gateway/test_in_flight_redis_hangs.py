"""A Redis that hangs (SIGSTOP: no answer, no refusal) under the Paddle gateway's in-flight
keys is answered as one that is down (review h78b): a create is refused
``provider_unavailable`` as a local dependency, well inside the call's deadline, with no
verdict on the tenant's Paddle circuit, so its reads (no Redis needed) go on meanwhile.
The worker's client has no socket timeout (agents/commands.py): before, the create
waited for the call's deadline, its ``timeout`` was taken for Paddle's, and the circuit
opened over Redis. Thawed, creates are made again, each once."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import redis.asyncio as aredis

from paystream.gateways.base import (
    REQUEST_SENT_SINCE,
    CreatePayment,
    PaymentResult,
    RetrievePayment,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle.references import request_tag
from paystream.gateways.retry import CircuitState
from paystream.settings import load_settings
from paystream.tenancy.models import Tenant
from paystream.tenancy.policy import CallPolicy
from tests.fixtures.frozen_redis import frozen, own_redis
from tests.gateways.paddle_gateway.wire import effects, gateway, key, usd

CALL_TIMEOUT = 3.0


async def test_a_hung_redis_refuses_creates_as_down_and_reads_go_on(
    paddle_url: str, tmp_path: Path
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        paddle_api_base=paddle_url,
        gateway_timeout_seconds=CALL_TIMEOUT,
        gateway_max_attempts=1,
        breaker_failure_threshold=2,
    )
    policy = CallPolicy(settings)
    call = policy(Tenant(tenant_id=tenant, gateway="paddle"))
    with own_redis(tmp_path / "redis") as rd:
        # As the worker builds its client (agents/commands.py): no socket timeout.
        client = aredis.Redis.from_url(rd.url, socket_timeout=None)
        gw = gateway(paddle_url, tenant_id=tenant, redis=client)
        gw._client._sdk.timeout = CALL_TIMEOUT
        REQUEST_SENT_SINCE.set(time.time())

        async def create(amount: int, k: str) -> PaymentResult:
            req = CreatePayment(amount=usd(amount), provider_payment_method_id="checkout")
            result: PaymentResult = await call(lambda: gw.create_payment(req, idempotency_key=k))
            return result

        try:
            first = await create(5200, key())  # (a connection held, as a worker's)
            refused: list[tuple[GatewayError, float]] = []
            frozen_keys = [key() for _ in range(3)]
            with frozen(rd):
                for k in frozen_keys:
                    started = time.monotonic()
                    try:
                        await create(5300, k)
                    except GatewayError as exc:
                        refused.append((exc, time.monotonic() - started))
                state = policy.policy.breaker(tenant, "paddle").state
                pid = first.provider_payment_id
                read = await call(
                    lambda: gw.retrieve_payment(
                        RetrievePayment(provider_payment_id=pid), idempotency_key=key()
                    )
                )
            again_key = key()
            again = await create(5400, again_key)
            twice = await create(5400, again_key)  # (the same request: answered, not made)
        finally:
            await gw.aclose()
            await client.aclose()
    assert [e.code for e, _ in refused] == [ErrorCode.PROVIDER_UNAVAILABLE] * 3, refused
    # (each the last try's refusal, as the policy gives it up: RetriesExhausted)
    causes = [getattr(e, "last", e) for e, _ in refused]
    assert all(c.local_dependency and not c.reached_provider for c in causes), causes
    assert max(took for _, took in refused) < CALL_TIMEOUT, refused  # (not the deadline)
    assert state is CircuitState.CLOSED, f"the tenant's Paddle circuit is {state.value}"
    assert read.provider_payment_id == first.provider_payment_id
    assert again.provider_payment_id == twice.provider_payment_id
    ledger = await effects(paddle_url)

    def made(k: str) -> int:
        tag = request_tag(k)
        return sum(
            1
            for e in ledger
            if e["kind"] == "transaction"
            and (e.get("custom_data") or {}).get("paystream_request") == tag
        )

    assert [made(k) for k in frozen_keys] == [0, 0, 0]  # (never sent unguarded)
    assert made(again_key) == 1
